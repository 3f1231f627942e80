"""Human approval: the flow run pauses with a form, and only an approving answer moves `champion`."""

import threading
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateName
from prefect.flow_runs import resume_flow_run

from flows.finetune import finetune
from peftflow.mlflow_io.aliases import alias_history
from tests.integration.conftest import tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("prefect")]


def _paused_run(timeout_s: float = 600):
    state_filter = FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"])))
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_run_filter=state_filter)
            if runs:
                return runs[0]
            time.sleep(1)
    raise AssertionError("no flow run paused for approval")


def _run_and_answer(cfg, answer: dict):
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=finetune(cfg)))
    worker.start()
    paused = _paused_run()
    resume_flow_run(paused.id, run_input=answer)
    worker.join(timeout=600)
    return paused, result["out"]


def test_promotion_waits_for_a_person(harness, env, tiny_model):
    cfg = tiny_config(
        tiny_model,
        env,
        registry={"name": "tiny-approval"},
        promotion={"metric": "perplexity", "require_approval": True, "approval_timeout_s": 600},
    )

    paused, rejected = _run_and_answer(cfg, {"approve": False, "reason": "wrong tone", "approver": "bob"})
    assert paused.state.name == "Paused"
    assert not rejected.promoted and rejected.champion is None
    assert "rejected by ui:bob: wrong tone" in rejected.summary

    # The same training again (cached steps), approved this time.
    _, approved = _run_and_answer(cfg, {"approve": True, "reason": "checked samples", "approver": "alice"})
    assert (approved.version, approved.promoted, approved.champion) == ("1", True, "1")
    history = alias_history("tiny-approval", "1", "champion")
    assert [h["by"] for h in history] == ["ui:alice"] and "approved: checked samples" in history[0]["reason"]
