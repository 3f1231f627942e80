from prefect import task

from peftflow.mlflow_io.aliases import CHAMPION, move_champion
from peftflow.mlflow_io.versions import ModelVersionRef, get_version_by_alias
from peftflow.promotion import GateDecision


@task(name="apply-approval")
def apply_approval(version: ModelVersionRef, decision: GateDecision, approved: bool, reason: str,
                   approver: str) -> tuple[GateDecision, str | None]:
    """After a person answered the approval form: promote, or record the refusal."""
    if approved:
        move_champion(version.name, version.version, f"{decision.reason}; approved: {reason}", actor=approver)
    verdict = f"approved by {approver}" if approved else f"rejected by {approver}"
    decision = GateDecision(approved, f"{decision.reason}; {verdict}: {reason}", decision.candidate,
                            decision.incumbent, decision.incumbent_label)
    current = get_version_by_alias(version.name, CHAMPION)
    return decision, current.version if current else None
