from dataclasses import replace

from prefect import task

from peftflow.config import RunConfig
from peftflow.evaluation.report import EvalReport
from peftflow.mlflow_io.aliases import CHAMPION
from peftflow.mlflow_io.versions import ModelVersionRef, get_version_by_alias
from peftflow.promotion import GateDecision, gate, promote


@task(name="promote-version")
def promote_version(config: RunConfig, version: ModelVersionRef, evaluation: EvalReport,
                    flow_run_id: str, merge_passed: bool = True,
                    guard: tuple[float, float] | None = None,
                    sweep_verdict: tuple[bool, str] | None = None) -> tuple[GateDecision, str | None]:
    """Moves `champion` only when the gate passes; returns the decision and the champion version after.

    `sweep_verdict` = (decided, why) of a sweep's winner against its runner-up: the reason leads
    with it, and a winner the sweep could not tell from its runner-up is not promoted."""
    decision = gate(config, evaluation, merge_passed, guard)
    if sweep_verdict:
        decided, why = sweep_verdict
        decision = replace(decision, promote=decision.promote and decided,
                           reason=f"{why}; {decision.reason}" + ("" if decided else "; not promoted"))
    if decision.promote and config.promotion.auto_promote and not config.promotion.require_approval:
        promote(version.name, version.version, decision, actor=f"prefect flow run {flow_run_id}")
    current = get_version_by_alias(version.name, CHAMPION)
    return decision, current.version if current else None
