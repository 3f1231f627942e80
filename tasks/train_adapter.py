"""Train an adapter; metrics stream to MLflow and a Prefect progress artifact."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from peftflow.config import RunConfig
from peftflow.data import PreparedData
from peftflow.mlflow_io import tracking
from peftflow.run_dir import RunDir
from peftflow.stages import get_workflow
from peftflow.stages.workflow import RunModels
from peftflow.store import portable, save_output
from peftflow.training import distributed
from peftflow.training.run import TrainResult
from peftflow.training.trainer import MetricsCallback, StepProgress, TrainingProgress
from tasks._policy import gpu_slot, retry_unless_user_error


class _ProgressCallback(TrainingProgress):
    """The log line, plus the flow run's progress artifact: percent of steps, and step, loss and ETA."""

    def __init__(self):
        super().__init__()
        self.artifact_id = create_progress_artifact(
            progress=0.0, key="training-progress", description="Training: not started"
        )

    def report(self, progress: StepProgress) -> None:
        super().report(progress)
        update_progress_artifact(self.artifact_id, progress=progress.percent, description=f"Training: {progress}")


def _key(context, params) -> str:
    config = params["config"]
    run = RunDir.of(config, params["train_key"])
    return f"train-{params['train_key']}-{portable(config.storage, config.registry.name, run.path)}"


@task(
    name="train-adapter",
    cache_key_fn=_key,
    persist_result=True,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_user_error,
)
def train_adapter(config: RunConfig, models: RunModels, data: PreparedData, train_key: str, run_id: str) -> TrainResult:
    """Resumes from the last checkpoint of this training key, so a retry continues, not restarts.
    From a deployment, holds a slot of the strict `gpu` concurrency limit while training."""
    sink = MetricsCallback(lambda step, metrics: tracking.log_metrics(run_id, metrics, step=step))
    # One slot per GPU process: queue behind other runs for the accelerator instead of fighting over it.
    with gpu_slot(config.num_processes):
        result = distributed.train(
            config,
            models.model.path,
            data.path,
            RunDir.of(config, train_key).path,
            callbacks=(sink, _ProgressCallback()),
            trainer_factory=get_workflow(config).trainer(config, models),
        )
    if distributed.is_distributed(config):  # torchrun reports no steps live: log its loss history now
        for step, loss in result.loss_history:
            tracking.log_metrics(run_id, {"loss": loss}, step=step)
        for step, loss in result.eval_history:
            tracking.log_metrics(run_id, {"eval_loss": loss}, step=step)
    save_output(config.storage, config.registry.name, result.adapter_dir)  # with a run store: sealed there
    tracking.log_metrics(run_id, result.metrics(), step=result.steps)  # charted at the end, not at step 0
    tracking.set_run_tags(
        run_id,
        {
            "peftflow.optimizer_used": result.optimizer_used,
            "peftflow.method": result.method,
            "peftflow.compute": result.compute,
            "peftflow.gradient_checkpointing": result.gradient_checkpointing,
        },
    )
    return result
