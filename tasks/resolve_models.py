from prefect import task

from peftflow.config import RunConfig
from peftflow.stages import get_workflow
from peftflow.stages.workflow import RunModels


@task(name="resolve-models")
def resolve_models(config: RunConfig) -> RunModels:
    """The model the run trains as a local safetensors dir with its fingerprint (the built-in model is
    converted once, then cached), and the models its stage adds (a distillation teacher, its adapter
    merged in; the student given or pruned from it)."""
    return get_workflow(config).resolve(config)
