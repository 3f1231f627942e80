from prefect import task

from peftflow.mlflow_io import tracking


@task(name="finish-tracking-run")
def finish_tracking_run(run_id: str, status: str = "FINISHED") -> None:
    tracking.finish_run(run_id, status)
