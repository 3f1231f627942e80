from prefect import task
from prefect.artifacts import create_markdown_artifact

from peftflow.config import RunConfig
from peftflow.data import PreparedData
from peftflow.stages import get_workflow
from peftflow.stages.workflow import RunModels


@task(name="add-stage-rows", log_prints=False)
def add_stage_rows(config: RunConfig, models: RunModels, data: PreparedData) -> PreparedData:
    """The training split plus the rows the stage adds (distillation: the teacher's answers to
    kd_unlabeled_dataset's prompts), cached by the stage."""
    added, note = get_workflow(config).training_data(config, models, data)
    create_markdown_artifact(key="stage-rows", markdown=note)
    return added
