"""Events peftflow emits: `peftflow.dataset.updated` starts the `retrain-on-data` deployment;
`peftflow.model.alias-set` (sent by `peftflow relay` for each alias move MLflow reports) starts
`on-promotion` when the alias is `champion`."""

from __future__ import annotations

import asyncio

DATASET_UPDATED = "peftflow.dataset.updated"
ALIAS_SET = "peftflow.model.alias-set"


def dataset_updated_event(dataset: str, dataset_dir: str | None = None, uri: str | None = None):
    from prefect.events import Event

    payload = {"dataset": dataset, "dataset_dir": dataset_dir or "", "uri": uri or ""}
    return Event(
        event=DATASET_UPDATED,
        resource={
            "prefect.resource.id": f"peftflow.dataset.{dataset}",
            "prefect.resource.name": dataset,
            "peftflow.dataset": dataset,
        },
        payload=payload,
    )


def emit_dataset_updated(dataset: str, dataset_dir: str | None = None, uri: str | None = None):
    """Send `peftflow.dataset.updated` to the Prefect server at PREFECT_API_URL and wait until it is
    delivered. Payload: dataset (names in dataset_info.json), dataset_dir, uri (e.g. s3://bucket/key)."""
    from prefect.events.clients import get_events_client
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        from peftflow.errors import UserError

        raise UserError("PREFECT_API_URL is not set: events go to a running Prefect server")
    event = dataset_updated_event(dataset, dataset_dir, uri)

    async def send():
        async with get_events_client() as client:
            await client.emit(event)

    asyncio.run(send())
    return event


def alias_set_event(name: str, version: str, alias: str, actor: str, moved_at: str, delivery_id: str):
    """The resource is the registered model version, `peftflow.model.<name>.<version>`; its labels
    also carry the alias, so a trigger can match `peftflow.alias: champion`. The event id is
    derived from MLflow's delivery id: the Prefect server stores an event id once."""
    import uuid

    from prefect.events import Event

    payload = {
        "name": name,
        "version": version,
        "alias": alias,
        "actor": actor,
        "moved_at": moved_at,
        "delivery_id": delivery_id,
    }
    return Event(
        event=ALIAS_SET,
        id=uuid.uuid5(uuid.NAMESPACE_URL, f"mlflow-webhook:{delivery_id}"),
        occurred=moved_at,
        resource={
            "prefect.resource.id": f"peftflow.model.{name}.{version}",
            "prefect.resource.name": f"{name} v{version}",
            "peftflow.registered-model": name,
            "peftflow.version": version,
            "peftflow.alias": alias,
        },
        payload=payload,
    )
