"""The registry flows in-process (Prefect test server, sqlite MLflow): `promote` moves and rolls back
`champion` by hand; in `on-promotion` a champion moved by hand that fails the guard check is moved
back with `promotion.guard_on_manual: rollback`, the rollback's own report is recognised, a
repeated delivery is dropped; `export-model` follows."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows.export_model import export_model
from flows.on_promotion import on_promotion
from flows.promote import promote
from peftflow.config import RunConfig
from peftflow.mlflow_io.aliases import alias_history, move_champion
from peftflow.mlflow_io.publishing import publish_model
from peftflow.mlflow_io.tracking import configure_mlflow, finish_run, start_run
from peftflow.mlflow_io.versions import get_version_by_alias

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("prefect")]

NAME = "manual-tiny"


def alias(name: str) -> str:
    return get_version_by_alias(NAME, name).version


def test_promote_flow_moves_champion_by_hand_and_rolls_back(harness, env):
    configure_mlflow()
    client = MlflowClient()
    client.create_registered_model("by-hand")
    for i in range(2):
        client.create_model_version("by-hand", source=(env / f"v{i}").as_uri())
    assert promote("by-hand", "ship it", version="1", actor="dashboard:dana")["champion"] == "1"
    out = promote("by-hand", "better", version="2", actor="dashboard:dana")
    assert out == {"champion": "2", "previous": "1", "challenger": None}
    out = promote("by-hand", "bad answers", action="rollback", actor="dashboard:dana")
    assert (out["champion"], out["previous"]) == ("1", "2")
    assert alias_history("by-hand", "1", "champion")[-1]["by"] == "dashboard:dana"
    with pytest.raises(ValueError, match="action `promote` needs a version"):
        promote("by-hand", "no version given")


def test_guard_failure_after_a_move_by_hand_rolls_champion_back(harness, env, tiny_model, tmp_path):
    cfg = RunConfig(
        model_name_or_path=tiny_model,
        max_samples=40,
        val_size=8,
        registry={"name": NAME, "experiment": "manual"},
        evaluation={"metric": "json_fields", "max_samples": 2, "max_new_tokens": 4, "batch_size": 4},
        # a tolerance of -1 demands 1 nat less guard loss than the previous champion: v2 (the same
        # weights) fails, as a version that forgot general ability would
        promotion={
            "guard_dataset": "demo_general",
            "guard_max_samples": 8,
            "guard_tolerance": -1.0,
            "guard_on_manual": "rollback",
        },
    )
    run_id = start_run(cfg, {})
    publish_model(run_id, NAME, tiny_model, {"base_model": tiny_model}, {})
    finish_run(run_id)
    client = MlflowClient()
    source = client.get_model_version(NAME, "1").source
    client.create_model_version(NAME, source=source, run_id=run_id, model_id=source.split("/")[-1])
    move_champion(NAME, "1", "first release", "test:alice")
    now = lambda: datetime.now(timezone.utc).isoformat()  # noqa: E731

    own = on_promotion(NAME, "1", moved_at=now(), delivery_id="d-1", config=cfg, return_state=True)
    assert "moved by peftflow (test:alice: first release)" in own.message

    client.set_registered_model_alias(NAME, "champion", "2")
    summary = on_promotion(NAME, "2", moved_at=now(), delivery_id="d-2", config=cfg)
    assert summary["champion"] == "rolled back to v1" and not summary["guard"]["passed"]
    assert (alias("champion"), alias("previous")) == ("1", "2")
    reason = json.loads(client.get_model_version(NAME, "2").tags["rolled_back"])["reason"]
    assert reason.startswith("guard check after a move in MLflow: guard-set loss rose from")
    assert alias_history(NAME, "2", "champion")[-1]["reason"] == "moved in MLflow"
    back = alias_history(NAME, "1", "champion")[-1]
    assert back["reason"].startswith("rollback from v2: guard check") and back["by"].startswith("prefect flow run ")

    # MLflow reports the rollback's move too: peftflow's own; and the first report again: a duplicate
    rollback_report = on_promotion(NAME, "1", moved_at=now(), delivery_id="d-3", config=cfg, return_state=True)
    assert "moved by peftflow" in rollback_report.message and "rollback from v2" in rollback_report.message
    again = on_promotion(NAME, "2", moved_at=now(), delivery_id="d-2", config=cfg, return_state=True)
    assert again.message == "delivery d-2 was handled already"
    other = on_promotion("someone-else", "1", config=cfg, return_state=True)
    assert "not this deployment's model" in other.message

    exported = Path(export_model(NAME, "champion", str(tmp_path / "serve")))
    assert exported.name == "v1" and (exported / "config.json").is_file()
    assert (tmp_path / "serve" / NAME / "current").resolve() == exported.resolve()
