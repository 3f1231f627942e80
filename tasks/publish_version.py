"""Register the merged model with its lineage, then let the gate decide on `champion`."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from peftflow import registry, report
from peftflow.config import RunConfig
from peftflow.evaluate import EvalReport
from peftflow.merge import MergeResult
from peftflow.registry import GateDecision, ModelVersionRef
from peftflow.train import TrainResult
from tasks._policy import retry_unless_user_error


@task(name="publish-version", retries=3, retry_delay_seconds=[5, 15, 45], retry_condition_fn=retry_unless_user_error)
def publish_version(config: RunConfig, run_id: str, adapter: TrainResult, merged: MergeResult | None,
                    evaluation: EvalReport, lineage: dict[str, str], base_model_dir: str | None = None) -> ModelVersionRef:
    """Idempotent per MLflow run: a retry or a cached rerun returns the version already registered.

    No merged model (a method that cannot be merged, or merge: false): the adapter is published
    with the path of its base, so the version reloads onto exactly that base."""
    registry.configure_mlflow()
    work = Path(adapter.adapter_dir).parent
    registry.log_artifact(run_id, adapter.adapter_dir, "adapter")
    registry.log_artifact(run_id, str(report.loss_curve(adapter.loss_history, work / "loss_curve.png")))
    metrics = {f"{label}.{k}": v for label, s in evaluation.models.items() for k, v in s.summary().items()}
    if merged is None:
        return registry.publish_adapter(run_id, config.registry.name, adapter.adapter_dir, base_model_dir,
                                        lineage, metrics, trust_remote_code=config.trust_remote_code)
    return registry.publish_model(run_id, config.registry.name, merged.merged_dir, lineage, metrics,
                                  trust_remote_code=config.trust_remote_code)


def gate(config: RunConfig, evaluation: EvalReport) -> GateDecision:
    metric = config.promotion.metric
    incumbent = "champion" if "champion" in evaluation.models else "base"
    value = lambda label: getattr(evaluation.models[label], metric)  # noqa: E731
    return registry.decide_promotion(metric, value("tuned"), value(incumbent),
                                     "current champion" if incumbent == "champion" else "base model",
                                     config.promotion.min_improvement, higher_is_better=metric == "score")


@task(name="promote-version")
def promote_version(config: RunConfig, version: ModelVersionRef, evaluation: EvalReport,
                    flow_run_id: str) -> tuple[GateDecision, str | None]:
    """Moves `champion` only when the gate passes; returns the decision and the champion version after."""
    registry.configure_mlflow()
    decision = gate(config, evaluation)
    if decision.promote and config.promotion.auto_promote:
        registry.promote(version.name, version.version, decision, actor=f"prefect flow run {flow_run_id}")
    current = registry.get_version_by_alias(version.name, "champion")
    return decision, current.version if current else None


@task(name="write-summary")
def write_summary(config: RunConfig, version: ModelVersionRef, evaluation: EvalReport, decision: GateDecision,
                  champion: str | None, notes: list[str]) -> str:
    markdown = report.summary_markdown(version.name, version.version, evaluation.metric,
                                       {k: v.summary() for k, v in evaluation.models.items()},
                                       decision.reason, champion, notes)
    create_markdown_artifact(key="finetune-summary", markdown=markdown, description="Base vs fine-tune, version, aliases")
    return markdown
