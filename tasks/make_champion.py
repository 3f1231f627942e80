from prefect import task

from peftflow.mlflow_io.aliases import move_champion


@task(name="make-champion")
def make_champion(name: str, version: str, reason: str, actor: str) -> str:
    """Point `champion` at `version` by hand, no gate (under the alias lock; the old champion becomes
    `previous`); returns the champion version."""
    return move_champion(name, version, reason, actor)
