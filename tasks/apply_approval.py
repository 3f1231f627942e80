from prefect import task

from peftflow.mlflow_io.aliases import CHAMPION, move_champion
from peftflow.mlflow_io.versions import ModelVersionRef, get_version_by_alias
from peftflow.promotion import GateDecision, with_approval


@task(name="apply-approval")
def apply_approval(
    version: ModelVersionRef, decision: GateDecision, approved: bool, reason: str, approver: str
) -> tuple[GateDecision, str | None]:
    """After a person answered the approval form: promote, or record the refusal."""
    if approved:
        move_champion(version.name, version.version, f"{decision.reason}; approved: {reason}", actor=approver)
    current = get_version_by_alias(version.name, CHAMPION)
    return with_approval(decision, approved, reason, approver), current.version if current else None
