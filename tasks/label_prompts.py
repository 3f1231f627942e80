from prefect import task
from prefect.artifacts import create_markdown_artifact

from peftflow.config import RunConfig
from peftflow.data import PreparedData
from peftflow.distill.labelling import teacher_labelled
from peftflow.models.resolve import ResolvedModel


@task(name="label-prompts-with-teacher", log_prints=False)
def label_prompts(config: RunConfig, teacher: ResolvedModel, student: ResolvedModel, data: PreparedData) -> PreparedData:
    """The training split plus the teacher's answers to kd_unlabeled_dataset's prompts (cached)."""
    labelled = teacher_labelled(config, teacher, student.path, data)
    create_markdown_artifact(
        key="teacher-labelled-dataset",
        markdown=(f"**Teacher-labelled** `{config.kd_unlabeled_dataset}` fingerprint `{labelled.fingerprint}`: "
                  f"{labelled.train_rows - data.train_rows} teacher-answered rows added to {data.train_rows} labelled "
                  f"train rows; {labelled.eval_rows} held out (unchanged)."),
    )
    return labelled
