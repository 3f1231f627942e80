from prefect import task
from prefect.artifacts import create_markdown_artifact

from peftflow.evaluation.report import EvalReport
from peftflow.mlflow_io.publishing import describe
from peftflow.mlflow_io.versions import ModelVersionRef
from peftflow.promotion import GateDecision
from peftflow.summary import summary_markdown


@task(name="write-summary")
def write_summary(
    version: ModelVersionRef, evaluation: EvalReport, decision: GateDecision, champion: str | None, notes: list[str]
) -> str:
    markdown = summary_markdown(
        version.name,
        version.version,
        evaluation.metric,
        {k: v.summary() for k, v in evaluation.models.items()},
        decision.reason,
        champion,
        notes,
    )
    create_markdown_artifact(
        key="finetune-summary", markdown=markdown, description="Base vs fine-tune, version, aliases"
    )
    describe(version, markdown)  # the MLflow run's and the version's description too
    return markdown
