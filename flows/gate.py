"""Publish a fine-tune and gate it, as finetune and sweep both end: the version registered as
`challenger`, the gate against the champion, and `champion` moved when it passed (after a person's
approval when `promotion.require_approval` asks for one)."""

from __future__ import annotations

from flows.approval import request_approval
from flows.outputs import Trained
from peftflow.config import RunConfig
from peftflow.evaluation.report import EvalReport
from peftflow.mlflow_io.versions import ModelVersionRef
from peftflow.promotion import GateDecision, needs_approval
from tasks.apply_approval import apply_approval
from tasks.promote_version import promote_version
from tasks.publish_version import publish_version


def publish_and_gate(
    config: RunConfig,
    run_id: str,
    trained: Trained,
    evaluation: EvalReport,
    lineage: dict[str, str],
    base_model_dir: str,
    guard: tuple[float, float] | None,
    sweep_verdict: tuple[bool, str] | None = None,
) -> tuple[ModelVersionRef, GateDecision, str | None]:
    """(the version published, the gate's decision, the champion version after it)."""
    version = publish_version(config, run_id, trained.adapter, trained.merged, evaluation, lineage, base_model_dir)
    merge_passed = trained.merged.passed if trained.merged else True
    decision, champion = promote_version(
        config, version, evaluation, lineage["prefect_flow_run_id"], merge_passed, guard, sweep_verdict
    )
    if needs_approval(config.promotion, decision):
        approved, why, who = request_approval(version, evaluation, decision, config.promotion.approval_timeout_s)
        decision, champion = apply_approval(version, decision, approved, why, who)
    return version, decision, champion
