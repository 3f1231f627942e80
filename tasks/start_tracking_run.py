"""The MLflow run that every stage of one training key logs into, by explicit run id."""

from prefect import task
from prefect.context import get_run_context

from peftflow.config import RunConfig
from peftflow.data import PreparedData
from peftflow.mlflow_io import tracking


@task(name="start-tracking-run", retries=3, retry_delay_seconds=[5, 15, 45])
def start_tracking_run(config: RunConfig, data: PreparedData, train_key: str, lineage: dict[str, str]) -> str:
    """One MLflow run per training key and registered model; a rerun finds and reuses it."""
    run_id = tracking.start_run(config, tags=lineage, train_key=train_key)
    tracking.log_metrics(run_id, {"data.train_rows": data.train_rows, "data.eval_rows": data.eval_rows,
                                  "data.dropped_rows": data.dropped, "data.truncated_rows": data.truncated})
    return run_id


def flow_run_id() -> str:
    """The id of the flow run this code runs in ('' outside one)."""
    ctx = get_run_context()
    flow_run = getattr(ctx, "flow_run", None)
    return str(flow_run.id) if flow_run else ""
