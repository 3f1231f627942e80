from prefect import task

from peftflow.config import RunConfig
from peftflow.preflight import check_training_setup as _check
from peftflow.stages.workflow import RunModels


@task(name="check-training-setup")
def check_training_setup(config: RunConfig, models: RunModels) -> None:
    """Refuse, before any training, what the model cannot train (module names, optimizer, schedule, 4-bit)."""
    _check(config, models.model.path)
