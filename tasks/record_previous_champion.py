from prefect import task

from peftflow.mlflow_io.outside_moves import record_previous


@task(name="record-previous-champion")
def record_previous_champion(name: str, version: str, previous: str | None, actor: str) -> str | None:
    """After `champion` was moved outside peftflow onto `version`: `previous` onto the champion it
    replaced, while `version` still is champion; returns the version `champion` points at now."""
    return record_previous(name, version, previous, actor)
