from prefect import task

from peftflow.mlflow_io.versions import version_number


@task(name="find-version-number")
def find_version_number(name: str, version: str) -> str:
    """A version number, or the number an alias points at (ValueError when it points at nothing)."""
    return version_number(name, version)
