from prefect import task

from peftflow.mlflow_io.aliases import alias_versions


@task(name="find-alias-versions")
def find_alias_versions(name: str) -> dict[str, str | None]:
    """The version `champion`, `previous` and `challenger` each point at (None: nothing)."""
    return alias_versions(name)
