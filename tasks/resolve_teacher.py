from prefect import task

from peftflow.config import RunConfig
from peftflow.distill.teacher import resolve_teacher as _resolve_teacher
from peftflow.models.resolve import ResolvedModel


@task(name="resolve-teacher")
def resolve_teacher(config: RunConfig) -> ResolvedModel:
    """The distillation teacher as a plain model dir (a registry version or an adapter merged in)."""
    return _resolve_teacher(config)
