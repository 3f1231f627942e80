"""Prefect flows (composition only) and the `peftflow` CLI that runs them."""

from peftflow.redact import install_log_redaction

# Every entry point (CLI, worker, deployment) imports this package first: no log line below it
# carries a credential from the environment or a URL password.
install_log_redaction()
