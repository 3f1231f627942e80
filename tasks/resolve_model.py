from prefect import task

from peftflow.config import RunConfig
from peftflow.methods import distill
from peftflow.models import ResolvedModel, resolve_model as _resolve


@task(name="resolve-model")
def resolve_model(ref: str, allow_pickle_weights: bool = False) -> ResolvedModel:
    """A local safetensors dir and its fingerprint (the built-in model is converted once, then cached)."""
    return _resolve(ref, allow_pickle_weights)


@task(name="resolve-teacher")
def resolve_teacher(config: RunConfig) -> ResolvedModel:
    """The distillation teacher as a plain model dir (a registry version or an adapter merged in)."""
    return distill.resolve_teacher(config)


@task(name="resolve-student")
def resolve_student(config: RunConfig, teacher: ResolvedModel) -> ResolvedModel:
    """The student (given, or the teacher pruned to student_layers), checked to share its tokenizer."""
    return distill.resolve_student(config, teacher)
