from prefect import task

from peftflow.mlflow_io.versions import set_version_tag


@task(name="tag-version")
def tag_version(name: str, version: str, key: str, value: str) -> None:
    """Set the tag `key` on a registered version (a result recorded where the version is)."""
    set_version_tag(name, version, key, value)
