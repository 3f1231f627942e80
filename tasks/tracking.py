"""The MLflow run that every stage of one training key logs into, by explicit run id."""

from prefect import task
from prefect.context import get_run_context

from peftflow import registry
from peftflow.config import RunConfig


def _key(context, params) -> str:
    return f"mlflow-run-{params['train_key']}-{params['config'].registry.experiment}"


@task(name="start-tracking-run", cache_key_fn=_key, persist_result=True)
def start_tracking_run(config: RunConfig, train_key: str, lineage: dict[str, str]) -> str:
    """One MLflow run per training key; a rerun with the same inputs reuses it."""
    registry.configure_mlflow()
    return registry.start_run(config, tags={**lineage, "peftflow.train_key": train_key})


def flow_run_id() -> str:
    ctx = get_run_context()
    flow_run = getattr(ctx, "flow_run", None)
    return str(flow_run.id) if flow_run else ""
