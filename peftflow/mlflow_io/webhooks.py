"""Register the relay's webhook on the MLflow server (`peftflow webhooks create`).

MLflow 3.17 webhooks are server-wide: they fire for every registered model, so the models are
checked and named in the webhook's description here and filtered by the relay (`--model`). The
MLflow server refuses an `http` or private-address URL unless it runs with
`MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https` and `MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true` (a relay
next to it on a private network), and keeps secrets only across restarts with a fixed
`MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY` (docs/operations.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from peftflow.errors import UserError
from peftflow.mlflow_io.tracking import configure_mlflow, mlflow_client

EVENTS = ["model_version_alias.created"]


@dataclass(frozen=True)
class WebhookSetup:
    webhook_id: str
    created: bool  # False: the webhook of that name existed and was brought up to date
    test_ok: bool
    test_status: int | None
    test_detail: str  # the relay's answer, or MLflow's error


def ensure_webhook(url: str, secret: str, models: list[str], name: str = "peftflow-relay") -> WebhookSetup:
    """Create (or update: same `name`) an active webhook on `url` for alias moves, signed with
    `secret`; then have MLflow send it its test delivery. Idempotent."""
    from mlflow.exceptions import MlflowException

    if not secret:
        raise UserError("webhooks create needs the webhook secret (--secret or PEFTFLOW_WEBHOOK_SECRET)")
    client = mlflow_client()
    for model in models:
        try:
            client.get_registered_model(model)
        except MlflowException as e:
            raise UserError(f"--model {model}: no such registered model on {configure_mlflow()}") from e
    description = "peftflow relay: alias moves of " + (", ".join(models) if models else "every registered model")
    existing = [w for w in _all_webhooks(client) if w.name == name]
    try:
        if existing:
            hook = client.update_webhook(
                existing[0].webhook_id, url=url, events=EVENTS, secret=secret, description=description, status="ACTIVE"
            )
        else:
            hook = client.create_webhook(name=name, url=url, events=EVENTS, secret=secret, description=description)
    except MlflowException as e:
        if e.error_code == "INVALID_PARAMETER_VALUE":
            raise UserError(f"--url {url}: {e.message}") from e
        raise
    result = client.test_webhook(hook.webhook_id, event=EVENTS[0])
    return WebhookSetup(
        hook.webhook_id,
        not existing,
        bool(result.success),
        result.response_status,
        result.error_message or result.response_body or "",
    )


def _all_webhooks(client) -> list:
    hooks, token = [], None
    while True:
        page = client.list_webhooks(max_results=100, page_token=token)
        hooks += list(page)
        token = page.token
        if not token:
            return hooks
