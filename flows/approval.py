"""Human approval of a promotion: the flow run pauses with a form in the Prefect UI."""

from __future__ import annotations

from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from peftflow.evaluation.report import EvalReport
from peftflow.mlflow_io.versions import ModelVersionRef
from peftflow.promotion import GateDecision


class PromotionApproval(RunInput):
    """The form shown on a paused run: approve (move `champion`) or reject, with a reason."""

    approve: bool = False
    reason: str = ""
    approver: str = ""


def approval_description(version: ModelVersionRef, evaluation: EvalReport, decision: GateDecision) -> str:
    rows = "\n".join(
        f"| {label} | {s.score:.4f} | {s.loss:.4f} | {s.perplexity:.4f} |" for label, s in evaluation.models.items()
    )
    return (
        f"## Promote `{version.name}` v{version.version} to `champion`?\n\n"
        f"| model | {evaluation.metric} | held-out loss | perplexity |\n|---|---|---|---|\n{rows}\n\n"
        f"**Gate:** {decision.reason}\n\nTick *approve* to promote; leave it unticked to reject."
    )


def request_approval(
    version: ModelVersionRef, evaluation: EvalReport, decision: GateDecision, timeout_s: int
) -> tuple[bool, str, str]:
    """Pause until someone answers; (approved, reason, who). A timeout counts as a rejection."""
    form = PromotionApproval.with_initial_data(
        description=approval_description(version, evaluation, decision), approve=False, reason="", approver=""
    )
    try:
        answer = pause_flow_run(
            wait_for_input=form, timeout=timeout_s, poll_interval=5, key=f"approve-{version.name}-{version.version}"
        )
    except FlowPauseTimeout:
        return False, f"no answer within {timeout_s} s", "timeout"
    return bool(answer.approve), answer.reason or "(no reason given)", f"ui:{answer.approver or 'unknown'}"
