from prefect import task

from peftflow.config import RunConfig
from peftflow.models.resolve import ResolvedModel
from peftflow.preflight import check_training_setup as _check


@task(name="check-training-setup")
def check_training_setup(config: RunConfig, model: ResolvedModel) -> None:
    """Refuse, before any training, what the model cannot train (module names, optimizer, schedule, 4-bit)."""
    _check(config, model.path)
