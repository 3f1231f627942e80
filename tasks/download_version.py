from prefect import task

from peftflow.mlflow_io.downloads import download_model_dir


@task(name="download-version")
def download_version(model_uri: str) -> str:
    """A registered version as a local model dir (cached per version)."""
    return download_model_dir(model_uri)
