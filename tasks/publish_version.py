"""Register the merged model with its lineage, then let the gate decide on `champion`."""

from __future__ import annotations

import math
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from peftflow import gguf_export, registry, report
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
                                        lineage, metrics, trust_remote_code=config.trust_remote_code,
                                        for_vllm=config.registry.vllm_ready)
    version = registry.publish_model(run_id, config.registry.name, merged.merged_dir, lineage, metrics,
                                     trust_remote_code=config.trust_remote_code)
    if config.registry.gguf_outtype:
        version = gguf_export.attach_to_version(version, merged.merged_dir, config.registry.gguf_outtype, str(work))
    return version


def gate(config: RunConfig, evaluation: EvalReport, merge_passed: bool = True,
         guard: tuple[float, float] | None = None) -> GateDecision:
    """The promotion gate: the configured metric, tuned vs champion (or base), plus the paired
    bootstrap over per-example scores (metric `score`, when enabled), the merge fidelity and the
    guard-set loss (when a guard set is configured)."""
    p = config.promotion
    metric = p.metric
    incumbent = "champion" if "champion" in evaluation.models else "base"
    value = lambda label: getattr(evaluation.models[label], metric)  # noqa: E731
    paired = None
    if p.harness_metric:  # an lm-eval aggregate: no per-example scores for the bootstrap
        metric = f"harness {p.harness_metric}"
        value = lambda label: evaluation.models[label].harness.get(p.harness_metric, math.nan)  # noqa: E731
    elif metric == "score" and p.bootstrap_samples:
        paired = paired_scores(evaluation, "tuned", incumbent)
    return registry.decide_promotion(metric, value("tuned"), value(incumbent),
                                     "current champion" if incumbent == "champion" else "base model",
                                     p.min_improvement, higher_is_better=metric == "score" or bool(p.harness_metric),
                                     paired=paired,
                                     bootstrap_samples=p.bootstrap_samples, confidence=p.confidence,
                                     merge_passed=merge_passed, guard=guard, guard_tolerance=p.guard_tolerance)


def paired_scores(evaluation: EvalReport, a: str, b: str) -> tuple[list[float], list[float]]:
    """Per-example scores of two models on the examples both scored, aligned by example index."""
    left = {e["index"]: e["score"] for e in evaluation.models[a].examples}
    right = {e["index"]: e["score"] for e in evaluation.models[b].examples}
    common = sorted(left.keys() & right.keys())
    return [left[i] for i in common], [right[i] for i in common]


@task(name="promote-version")
def promote_version(config: RunConfig, version: ModelVersionRef, evaluation: EvalReport,
                    flow_run_id: str, merge_passed: bool = True,
                    guard: tuple[float, float] | None = None) -> tuple[GateDecision, str | None]:
    """Moves `champion` only when the gate passes; returns the decision and the champion version after."""
    registry.configure_mlflow()
    decision = gate(config, evaluation, merge_passed, guard)
    if decision.promote and config.promotion.auto_promote and not config.promotion.require_approval:
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


@task(name="apply-approval")
def apply_approval(version: ModelVersionRef, decision: GateDecision, approved: bool, reason: str,
                   approver: str) -> tuple[GateDecision, str | None]:
    """After a person answered the approval form: promote, or record the refusal."""
    registry.configure_mlflow()
    if approved:
        registry.move_champion(version.name, version.version, f"{decision.reason}; approved: {reason}", actor=approver)
        decision = GateDecision(True, f"{decision.reason}; approved by {approver}: {reason}", decision.candidate,
                                decision.incumbent, decision.incumbent_label)
    else:
        decision = GateDecision(False, f"{decision.reason}; rejected by {approver}: {reason}", decision.candidate,
                                decision.incumbent, decision.incumbent_label)
    current = registry.get_version_by_alias(version.name, "champion")
    return decision, current.version if current else None
