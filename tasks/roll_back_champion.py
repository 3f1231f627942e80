from prefect import task

from peftflow.mlflow_io.aliases import rollback


@task(name="roll-back-champion")
def roll_back_champion(name: str, reason: str, actor: str) -> tuple[str, str]:
    """Swap `champion` and `previous` (under the alias lock); returns (champion now, rolled back)."""
    return rollback(name, reason, actor)
