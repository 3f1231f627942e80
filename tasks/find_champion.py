from prefect import task

from peftflow.config import RunConfig
from peftflow.mlflow_io.aliases import CHAMPION
from peftflow.mlflow_io.versions import ModelVersionRef, get_version_by_alias


@task(name="find-champion")
def find_champion(config: RunConfig) -> ModelVersionRef | None:
    return get_version_by_alias(config.registry.name, CHAMPION)
