"""Alias moves reported by MLflow's webhook: peftflow's own recognised once, duplicates dropped,
outside moves entered with the champion they replaced. A sqlite MLflow per test; no models."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import pytest
from mlflow import MlflowClient

from peftflow.mlflow_io import outside_moves
from peftflow.mlflow_io.aliases import alias_history, move_champion
from peftflow.mlflow_io.tracking import configure_mlflow
from peftflow.promotion import guard_verdict


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory):
    """One sqlite MLflow for the module (creating one takes seconds); each test its own model."""
    tmp = tmp_path_factory.mktemp("outside-moves")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PEFTFLOW_HOME", str(tmp / "home"))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db")
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        mp.chdir(tmp)
        configure_mlflow()
        yield tmp


@pytest.fixture
def three_versions(mlflow_db, request) -> str:
    """A registered model with versions 1-3 (no artifacts), named after the test."""
    name = request.node.name.removeprefix("test_")[:60]
    client = MlflowClient()
    client.create_registered_model(name)
    for i in range(3):
        client.create_model_version(name, source=(mlflow_db / f"v{i}").as_uri())
    return name


def iso(moment: datetime) -> str:
    return moment.isoformat()


def test_own_move_is_claimed_once_and_a_duplicate_is_dropped(three_versions):
    m = three_versions
    move_champion(m, "1", "first release", "alice")
    now = datetime.now(timezone.utc)
    move = outside_moves.take(m, "1", "champion", "mlflow", iso(now), "d-1")
    assert move.kind == "own" and "moved by peftflow (alice: first release)" in move.why
    (entry,) = alias_history(m, "1", "champion")
    assert entry["webhook"] == "d-1" and entry["by"] == "alice"
    assert outside_moves.take(m, "1", "champion", "mlflow", iso(now), "d-1").kind == "duplicate"


def test_outside_move_is_entered_with_the_champion_it_replaced(three_versions):
    m = three_versions
    move_champion(m, "1", "first release", "alice")
    outside_moves.take(m, "1", "champion", "mlflow", iso(datetime.now(timezone.utc)), "d-1")
    MlflowClient().set_registered_model_alias(m, "champion", "2")  # by hand: no history
    now = datetime.now(timezone.utc)
    move = outside_moves.take(m, "2", "champion", "mlflow", iso(now), "d-2")
    assert (move.kind, move.previous) == ("outside", "1")
    (entry,) = alias_history(m, "2", "champion")
    assert entry == {
        "at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "by": "mlflow",
        "reason": "moved in MLflow",
        "webhook": "d-2",
    }
    # back onto v1 by hand an hour later: v1's only peftflow entry is claimed (and old), so it is outside too,
    # and the champion it replaced is v2, whose entry is the latest before it
    later = outside_moves.take(m, "1", "champion", "mlflow", iso(now + timedelta(hours=1)), "d-3")
    assert (later.kind, later.previous) == ("outside", "2")
    assert [e["webhook"] for e in alias_history(m, "1", "champion")] == ["d-1", "d-3"]


def test_an_unclaimed_peftflow_entry_far_from_the_report_is_not_taken_for_it(three_versions):
    m = three_versions
    move_champion(m, "3", "release", "bob")
    far = datetime.now(timezone.utc) + timedelta(seconds=outside_moves.OWN_MOVE_WINDOW_S + 60)
    assert outside_moves.take(m, "3", "champion", "mlflow", iso(far), "d-9").kind == "outside"
    tags = MlflowClient().get_model_version(m, "3").tags
    assert [e.get("webhook") for e in json.loads(tags["alias.champion.history"])] == [None, "d-9"]


def test_guard_verdict_follows_the_gate_rule():
    assert guard_verdict(1.70, None, 0.05)[0]
    assert guard_verdict(1.74, 1.70, 0.05)[0]
    ok, line = guard_verdict(1.80, 1.70, 0.05)
    assert not ok and "rose from 1.7000 to 1.8000" in line
    assert not guard_verdict(math.nan, 1.70, 0.05)[0]
    assert not guard_verdict(1.70, 1.70, -0.1)[0]  # a negative tolerance demands a gain


def test_webhook_registration_checks_its_input_before_touching_the_server(three_versions):
    from peftflow.errors import UserError
    from peftflow.mlflow_io.webhooks import ensure_webhook

    m = three_versions
    with pytest.raises(UserError, match="needs the webhook secret"):
        ensure_webhook("http://relay:8765/mlflow-webhook", "", [m])
    with pytest.raises(UserError, match="--model nope: no such registered model"):
        ensure_webhook("http://relay:8765/mlflow-webhook", "s", [m, "nope"])
