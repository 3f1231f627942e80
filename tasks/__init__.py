"""Prefect tasks: each wraps one core call and adds retries, caching, artifacts and MLflow logging."""

from tasks import _logs  # noqa: F401 - importing a task sends the core's log lines to the run's logs
