"""Promotion: the gate (paired bootstrap, merge fidelity, guard set), what follows it (a sweep's
verdict, approval), manual promote, rollback, recorded alias moves and the CLI (the `promote` flow:
tests/integration/test_on_promotion_flow.py). A sqlite MLflow per test; no training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peftflow.config import RunConfig
from peftflow.evaluation.report import EvalReport, ModelScores
from peftflow.mlflow_io.aliases import alias_history, alias_versions, move_champion, rollback
from peftflow.mlflow_io.tracking import configure_mlflow
from peftflow.mlflow_io.versions import get_version_by_alias, version_number
from peftflow.promotion import (
    GateDecision,
    decide_promotion,
    moves_champion_now,
    needs_approval,
    paired_bootstrap,
    with_approval,
    with_sweep_verdict,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def mlflow_db(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("PEFTFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    configure_mlflow()
    return uri


def _versions(name: str, n: int, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    client.create_registered_model(name)
    for i in range(n):
        client.create_model_version(name, source=(tmp_path / f"v{i}").as_uri())


def _alias(name, alias):
    ref = get_version_by_alias(name, alias)
    return ref.version if ref else None


# --- the gate -------------------------------------------------------------------------------


def test_paired_bootstrap_interval():
    mean, lo, hi = paired_bootstrap([1.0] * 20, [0.0] * 20, 500, 0.95)
    assert (mean, lo, hi) == (1.0, 1.0, 1.0)
    # one lucky example out of 20: a positive mean, but the interval reaches 0
    mean, lo, hi = paired_bootstrap([1.0] + [0.5] * 19, [0.5] * 20, 2000, 0.95)
    assert mean > 0 and lo == 0.0 and hi > mean
    assert paired_bootstrap([0.3, 0.9], [0.1, 0.2], 200, 0.9, seed=1) == paired_bootstrap(
        [0.3, 0.9], [0.1, 0.2], 200, 0.9, seed=1
    )
    with pytest.raises(ValueError, match="equal"):
        paired_bootstrap([1.0], [1.0, 2.0], 10, 0.95)


def test_gate_needs_the_lower_bound_to_clear_the_margin():
    lucky = ([1.0] + [0.5] * 19, [0.5] * 20)  # mean gain 0.025, CI lower bound 0
    point = decide_promotion("score", 0.525, 0.5, "base model", 0.0)
    assert point.promote
    d = decide_promotion("score", 0.525, 0.5, "base model", 0.0, paired=lucky, bootstrap_samples=1000)
    assert not d.promote and "paired bootstrap CI" in d.reason and "does not clear" in d.reason
    solid = ([0.9] * 10 + [0.8] * 10, [0.5] * 20)
    d = decide_promotion("score", 0.85, 0.5, "base model", 0.1, paired=solid, bootstrap_samples=1000)
    assert d.promote and "95% paired bootstrap CI" in d.reason
    d = decide_promotion("score", 0.85, 0.5, "base model", 0.4, paired=solid, bootstrap_samples=1000)
    assert not d.promote and "by only" in d.reason  # the point gate refuses first
    assert decide_promotion("score", 0.525, 0.5, "base", 0.0, paired=lucky, bootstrap_samples=0).promote


def test_gate_refuses_failed_merge_and_guard_regression():
    d = decide_promotion("score", 0.9, 0.5, "base model", 0.0, merge_passed=False)
    assert not d.promote and "merge fidelity" in d.reason
    d = decide_promotion("score", 0.9, 0.5, "base model", 0.0, guard=(1.80, 1.70), guard_tolerance=0.05)
    assert not d.promote and "guard-set loss regressed from 1.7000 to 1.8000" in d.reason
    d = decide_promotion("score", 0.9, 0.5, "base model", 0.0, guard=(1.73, 1.70), guard_tolerance=0.05)
    assert d.promote and "guard-set loss 1.7300 vs 1.7000" in d.reason
    d = decide_promotion("score", 0.9, 0.5, "base model", 0.0, guard=(float("nan"), 1.70), guard_tolerance=0.05)
    assert not d.promote


def _report(tuned: list[float], base: list[float]) -> EvalReport:
    def scores(label, xs):
        return ModelScores(
            label,
            1.0,
            2.7,
            sum(xs) / len(xs),
            [{"index": i, "prediction": "", "reference": "", "score": x} for i, x in enumerate(xs)],
        )

    return EvalReport("json_fields", {"base": scores("base", base), "tuned": scores("tuned", tuned)})


def test_flow_gate_uses_per_example_scores_from_the_report():
    from peftflow.promotion import gate

    cfg = RunConfig(promotion={"metric": "score", "bootstrap_samples": 1000, "confidence": 0.9})
    assert not gate(cfg, _report([1.0] + [0.5] * 19, [0.5] * 20)).promote
    assert gate(cfg, _report([0.9] * 20, [0.5] * 20)).promote
    assert not gate(cfg, _report([0.9] * 20, [0.5] * 20), merge_passed=False).promote
    # bootstrap off (the default): the point estimate alone decides
    assert gate(RunConfig(), _report([1.0] + [0.5] * 19, [0.5] * 20)).promote


def test_flow_gate_on_a_harness_score():
    from peftflow.promotion import gate

    report = _report([0.9] * 4, [0.5] * 4)  # peftflow's own score favours the fine-tune
    report.models["base"].harness = {"my_task/acc": 0.6}
    report.models["tuned"].harness = {"my_task/acc": 0.4}
    cfg = RunConfig(
        evaluation={"harness_tasks": ["my_task"], "harness_include": "."}, promotion={"harness_metric": "my_task/acc"}
    )
    decision = gate(cfg, report)
    assert not decision.promote and decision.reason.startswith("harness my_task/acc 0.4000 is worse than base model")
    report.models["tuned"].harness = {"my_task/acc": 0.7}
    assert gate(cfg, report).promote
    with pytest.raises(ValueError, match="promotion.harness_metric other/acc: its task is not in"):
        RunConfig(evaluation={"harness_tasks": ["my_task"]}, promotion={"harness_metric": "other/acc"})


PASSED = GateDecision(True, "score 0.9000 beats base model", 0.9, 0.5, "base model")


def test_a_sweep_verdict_leads_the_reason_and_an_undecided_winner_is_not_promoted():
    assert with_sweep_verdict(PASSED, None) == PASSED
    decided = with_sweep_verdict(PASSED, (True, "a beats b"))
    assert decided == GateDecision(True, "a beats b; score 0.9000 beats base model", 0.9, 0.5, "base model")
    undecided = with_sweep_verdict(PASSED, (False, "a ties b"))
    assert not undecided.promote and undecided.reason == "a ties b; score 0.9000 beats base model; not promoted"
    refused = GateDecision(False, "score 0.5000 ties base model; not promoted", 0.5, 0.5, "base model")
    assert not with_sweep_verdict(refused, (True, "a beats b")).promote


@pytest.mark.parametrize(
    "gate_passed, auto_promote, require_approval, moves, asks",
    [
        (True, True, False, True, False),
        (True, True, True, False, True),
        (True, False, False, False, False),  # auto_promote off: nothing moves, nobody is asked
        (True, False, True, False, False),
        (False, True, False, False, False),
        (False, True, True, False, False),  # a refused gate is never put to a person
    ],
)
def test_after_the_gate_champion_moves_now_or_waits_for_approval(
    gate_passed, auto_promote, require_approval, moves, asks
):
    promotion = RunConfig(promotion={"auto_promote": auto_promote, "require_approval": require_approval}).promotion
    decision = GateDecision(gate_passed, "why", 0.9, 0.5, "base model")
    assert (moves_champion_now(promotion, decision), needs_approval(promotion, decision)) == (moves, asks)


def test_an_approval_answer_decides_and_joins_the_reason():
    assert with_approval(PASSED, True, "looks right", "ui:ann") == GateDecision(
        True, "score 0.9000 beats base model; approved by ui:ann: looks right", 0.9, 0.5, "base model"
    )
    rejected = with_approval(PASSED, False, "wrong tone", "ui:bob")
    assert not rejected.promote and rejected.reason == "score 0.9000 beats base model; rejected by ui:bob: wrong tone"


# --- alias moves ------------------------------------------------------------------------------


def test_manual_promote_and_rollback_record_every_move(mlflow_db, tmp_path):
    from mlflow.exceptions import MlflowException

    from peftflow.errors import UserError

    _versions("m", 3, tmp_path)
    with pytest.raises(UserError, match="no champion"):
        rollback("m", "nothing yet", "alice")
    move_champion("m", "1", "first release", "alice")
    with pytest.raises(UserError, match="no `previous`"):
        rollback("m", "nothing to go back to", "alice")
    move_champion("m", "3", "v3 is better", "bob")
    assert (_alias("m", "champion"), _alias("m", "previous")) == ("3", "1")

    assert rollback("m", "v3 hallucinates", "carol") == ("1", "3")
    assert (_alias("m", "champion"), _alias("m", "previous")) == ("1", "3")
    last = alias_history("m", "1", "champion")[-1]
    assert last["by"] == "carol" and "rollback from v3: v3 hallucinates" == last["reason"]
    assert "rolled back to v1" in alias_history("m", "3", "previous")[-1]["reason"]
    from mlflow import MlflowClient

    assert json.loads(MlflowClient().get_model_version("m", "3").tags["rolled_back"])["by"] == "carol"

    assert rollback("m", "undo", "carol") == ("3", "1")  # a second rollback undoes the first
    assert (_alias("m", "champion"), _alias("m", "previous")) == ("3", "1")
    with pytest.raises(MlflowException):
        move_champion("m", "9", "no such version", "bob")


def test_rollback_waits_for_the_alias_lock(mlflow_db, tmp_path):
    """A rollback is two moves; a promotion landing between them would leave champion and previous
    inconsistent, so it takes the lock move_champion takes."""
    import threading

    from peftflow.mlflow_io.aliases import alias_lock

    _versions("lk", 2, tmp_path)
    move_champion("lk", "1", "first", "alice")
    move_champion("lk", "2", "second", "alice")
    done = threading.Event()
    with alias_lock("lk"):  # another process's promotion in progress
        worker = threading.Thread(target=lambda: (rollback("lk", "bad", "bob"), done.set()))
        worker.start()
        assert not done.wait(1.5)
        assert _alias("lk", "champion") == "2"
    assert done.wait(30)
    worker.join()
    assert (_alias("lk", "champion"), _alias("lk", "previous")) == ("1", "2")


def test_alias_versions_and_version_numbers(mlflow_db, tmp_path):
    _versions("n", 2, tmp_path)
    assert alias_versions("n") == {"champion": None, "previous": None, "challenger": None}
    move_champion("n", "1", "first", "alice")
    move_champion("n", "2", "second", "alice")
    assert list(alias_versions("n").items()) == [("champion", "2"), ("previous", "1"), ("challenger", None)]
    assert version_number("n", "previous") == "1"
    assert version_number("n", "7") == "7"  # a number is taken as given, as `models:/n/7` would be
    with pytest.raises(ValueError, match="^n: no alias 'challenger'$"):
        version_number("n", "challenger")


def test_cli_promote_rollback_history(mlflow_db, tmp_path):
    _versions("c", 2, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""), COLUMNS="200")

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "flows.cli", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    r = cli("promote", "c", "--version", "1", "--reason", "first", "--actor", "ops:eve")
    assert r.returncode == 0, r.stderr
    r = cli("promote", "c", "--version", "2", "--reason", "second")
    assert r.stdout.strip() == "c: champion -> v2, previous -> v1, challenger -> none", r.stderr
    r = cli("rollback", "c", "--reason", "regression in prod")
    assert r.returncode == 0 and "champion -> v1, previous -> v2" in r.stdout, r.stderr
    r = cli("history", "c", "--version", "1")
    moves = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(m["alias"], m["by"].split(":")[0]) for m in moves] == [
        ("champion", "ops"),
        ("previous", "cli"),
        ("champion", "cli"),
    ]
    assert moves[-1]["reason"] == "rollback from v2: regression in prod"
    r = cli("promote", "c", "--version", "7", "--reason", "typo")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: c v7"), r.stderr
    r = cli("rollback", "nope", "--reason", "x")
    assert r.returncode == 2 and "no champion" in r.stderr
