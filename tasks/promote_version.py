from prefect import task

from peftflow.config import RunConfig
from peftflow.evaluation.report import EvalReport
from peftflow.mlflow_io.aliases import CHAMPION
from peftflow.mlflow_io.versions import ModelVersionRef, get_version_by_alias
from peftflow.promotion import GateDecision, gate, moves_champion_now, promote, with_sweep_verdict


@task(name="promote-version")
def promote_version(
    config: RunConfig,
    version: ModelVersionRef,
    evaluation: EvalReport,
    flow_run_id: str,
    merge_passed: bool = True,
    guard: tuple[float, float] | None = None,
    sweep_verdict: tuple[bool, str] | None = None,
) -> tuple[GateDecision, str | None]:
    """Moves `champion` only when the gate passes; returns the decision and the champion version after.

    `sweep_verdict` = (decided, why) of a sweep's winner against its runner-up: the reason leads
    with it, and a winner the sweep could not tell from its runner-up is not promoted."""
    decision = with_sweep_verdict(gate(config, evaluation, merge_passed, guard), sweep_verdict)
    if moves_champion_now(config.promotion, decision):
        promote(version.name, version.version, decision, actor=f"prefect flow run {flow_run_id}")
    current = get_version_by_alias(version.name, CHAMPION)
    return decision, current.version if current else None
