"""The MLflow run that every step of one training key logs into, by explicit run id; linked both
ways with the Prefect flow run that starts it."""

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.context import get_run_context
from prefect.utilities.urls import url_for

from peftflow.config import RunConfig
from peftflow.data import PreparedData
from peftflow.mlflow_io import tracking


@task(name="start-tracking-run", retries=3, retry_delay_seconds=[5, 15, 45])
def start_tracking_run(
    config: RunConfig, data: PreparedData, train_key: str, lineage: dict[str, str], parent_run_id: str | None = None
) -> str:
    """One MLflow run per training key and registered model; a rerun finds and reuses it (and the
    run's Prefect link then names the latest flow run). `parent_run_id`: nested under that run
    (a sweep's variant under the sweep's run; the latest sweep that trained or reused it)."""
    run_id = tracking.start_run(config, tags=lineage, train_key=train_key)
    if parent_run_id:
        tracking.set_run_tags(run_id, {tracking.PARENT_RUN_TAG: parent_run_id})
    tracking.log_metrics(
        run_id,
        {
            "data.train_rows": data.train_rows,
            "data.eval_rows": data.eval_rows,
            "data.dropped_rows": data.dropped,
            "data.truncated_rows": data.truncated,
        },
    )
    flow_run = lineage.get("prefect_flow_run_id")
    # None without a Prefect UI URL (PREFECT_UI_URL, or derived from PREFECT_API_URL).
    if flow_run and (flow_url := url_for("flow-run", obj_id=flow_run)):
        tracking.set_run_tags(run_id, {tracking.PREFECT_URL_TAG: flow_url})
    if mlflow_url := tracking.run_url(run_id):
        create_link_artifact(
            mlflow_url,
            link_text=f"MLflow run {run_id}",
            key="mlflow-run",
            description="The MLflow run of this training",
        )
    else:  # a local sqlite store: no server page to link to
        create_markdown_artifact(
            key="mlflow-run",
            description="The MLflow run of this training",
            markdown=f"MLflow run `{run_id}` in `{tracking.configure_mlflow()}` "
            f"(see it with `mlflow ui --backend-store-uri {tracking.configure_mlflow()}`)",
        )
    return run_id


def flow_run_id() -> str:
    """The id of the flow run this code runs in ('' outside one)."""
    ctx = get_run_context()
    flow_run = getattr(ctx, "flow_run", None)
    return str(flow_run.id) if flow_run else ""
