"""Register the fine-tune (merged model, or adapter on its base) with its lineage, as `challenger`;
with registry.gguf_outtype the merged model is attached as GGUF too."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from peftflow.config import RunConfig
from peftflow.evaluation.report import EvalReport
from peftflow.merge import MergeResult
from peftflow.mlflow_io import publishing, tracking
from peftflow.mlflow_io.versions import ModelVersionRef
from peftflow.serving.gguf import attach_to_version
from peftflow.summary import loss_curve
from peftflow.training.run import TrainResult
from tasks._policy import retry_unless_user_error


@task(name="publish-version", retries=3, retry_delay_seconds=[5, 15, 45], retry_condition_fn=retry_unless_user_error)
def publish_version(
    config: RunConfig,
    run_id: str,
    adapter: TrainResult,
    merged: MergeResult | None,
    evaluation: EvalReport,
    lineage: dict[str, str],
    base_model_dir: str | None = None,
) -> ModelVersionRef:
    """Idempotent per MLflow run: a retry or a cached rerun returns the version already registered.

    No merged model (a method that cannot be merged, or merge: false): the adapter is published
    with the path of its base, so the version reloads onto exactly that base."""
    work = Path(adapter.adapter_dir).parent
    tracking.log_artifact(run_id, adapter.adapter_dir, "adapter")
    tracking.log_artifact(run_id, str(loss_curve(adapter.loss_history, work / "loss_curve.png", adapter.eval_history)))
    metrics = {f"{label}.{k}": v for label, s in evaluation.models.items() for k, v in s.summary().items()}
    # held-out preference scores (dpo, rm): the version carries them beside the task metric
    metrics |= {f"{label}.preference_{k}": v for label, s in evaluation.models.items() for k, v in s.preference.items()}
    about = {"recipe": tracking.config_params(config), "description": config.registry.description}
    if merged is None:
        return publishing.publish_adapter(
            run_id,
            config.registry.name,
            adapter.adapter_dir,
            base_model_dir,
            lineage,
            metrics,
            trust_remote_code=config.trust_remote_code,
            for_vllm=config.registry.vllm_ready,
            **about,
        )
    version = publishing.publish_model(
        run_id,
        config.registry.name,
        merged.merged_dir,
        lineage,
        metrics,
        trust_remote_code=config.trust_remote_code,
        **about,
    )
    if config.registry.gguf_outtype:  # the merged model also as one GGUF file on the same version
        version = attach_to_version(version, merged.merged_dir, config.registry.gguf_outtype, str(work))
    return version
