"""Prefect flows (composition only) and the `peftflow` CLI that runs them."""

from flows import team_lock
from peftflow.redact import install_log_redaction

# Every entry point (CLI, worker, deployment) imports this package first: no log line below it
# carries a credential from the environment or a URL password, and alias moves take the team's
# lock (a Prefect global concurrency limit) when a Prefect server is configured.
install_log_redaction()
team_lock.install()
