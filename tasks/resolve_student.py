from prefect import task

from peftflow.config import RunConfig
from peftflow.distill.teacher import resolve_student as _resolve_student
from peftflow.models.resolve import ResolvedModel


@task(name="resolve-student")
def resolve_student(config: RunConfig, teacher: ResolvedModel) -> ResolvedModel:
    """The student (given, or the teacher pruned to student_layers), checked to share its tokenizer."""
    return _resolve_student(config, teacher)
