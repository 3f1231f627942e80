from prefect import task

from peftflow.mlflow_io.outside_moves import ReportedMove, take


@task(name="take-reported-move")
def take_reported_move(
    name: str, version: str, alias: str, actor: str, moved_at: str, delivery_id: str
) -> ReportedMove:
    """Enter one alias move MLflow reported: peftflow's own, a duplicate, or made outside peftflow."""
    return take(name, version, alias, actor, moved_at, delivery_id)
