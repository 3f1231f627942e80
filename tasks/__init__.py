"""Prefect tasks: each wraps one core call and adds retries, caching, artifacts and MLflow logging."""
