from prefect import task

from peftflow.config import RunConfig
from peftflow.data import PreparedData
from peftflow.evaluation.scoring import guard_losses
from peftflow.mlflow_io import tracking
from peftflow.mlflow_io.downloads import local_version
from peftflow.mlflow_io.versions import ModelVersionRef
from peftflow.models.resolve import ResolvedModel


@task(name="evaluate-guard-set")
def evaluate_guard(
    config: RunConfig,
    model: ResolvedModel,
    tuned_dir: str,
    champion: ModelVersionRef | None,
    guard: PreparedData,
    run_id: str,
) -> tuple[float, float]:
    """(fine-tune, incumbent) loss on the guard set; the incumbent is the champion, else the base."""
    incumbent, incumbent_base = local_version(champion) if champion else (model.path, None)
    losses = guard_losses(
        {"tuned": tuned_dir, "incumbent": incumbent},
        guard.path,
        config,
        base_model_dir=model.path,
        bases={"incumbent": incumbent_base} if incumbent_base else None,
    )
    tracking.log_metrics(run_id, {f"guard.{label}.loss": v for label, v in losses.items()})
    return losses["tuned"], losses["incumbent"]
