"""The MLflow run that every stage of one training key logs into, by explicit run id."""

from prefect import task
from prefect.context import get_run_context

from peftflow import registry
from peftflow.config import RunConfig
from peftflow.data import PreparedData


@task(name="start-tracking-run", retries=3, retry_delay_seconds=[5, 15, 45])
def start_tracking_run(config: RunConfig, data: PreparedData, train_key: str, lineage: dict[str, str]) -> str:
    """One MLflow run per training key and registered model; a rerun finds and reuses it."""
    registry.configure_mlflow()
    run_id = registry.start_run(config, tags=lineage, train_key=train_key)
    registry.log_metrics(run_id, {"data.train_rows": data.train_rows, "data.eval_rows": data.eval_rows,
                                  "data.dropped_rows": data.dropped, "data.truncated_rows": data.truncated})
    return run_id


@task(name="finish-tracking-run")
def finish_tracking_run(run_id: str, status: str = "FINISHED") -> None:
    registry.configure_mlflow()
    registry.finish_run(run_id, status)


def flow_run_id() -> str:
    ctx = get_run_context()
    flow_run = getattr(ctx, "flow_run", None)
    return str(flow_run.id) if flow_run else ""
