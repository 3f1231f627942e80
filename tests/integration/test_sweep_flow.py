"""The sweep flow on the tiny model under Prefect's test harness: variants as child flow runs, one
at a time under the concurrency limit, one registration, a cached rerun, and a sweep that loses
to the champion."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId

from flows.sweep import sweep
from flows.team_lock import limit_name
from tests.integration.conftest import task_states, tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("prefect")]

# Three learning rates: two learn a little in 4 steps, the last does not move the base.
GRID = {"learning_rate": [5e-3, 2e-3, 1e-7]}


def variant_runs(parent_flow_run_id: str) -> list:
    """The `sweep-variant` flow runs one sweep started, by their start time."""
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[parent_flow_run_id])))
        task_ids = {t.id for t in tasks}
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["sweep-variant"])), limit=200)
    return sorted((r for r in runs if r.parent_task_run_id in task_ids), key=lambda r: r.start_time)


def test_sweep_runs_variants_one_at_a_time_registers_the_winner_alone_and_reuses_them(harness, env, tiny_model):
    cfg = tiny_config(tiny_model, env, max_steps=4, registry={"name": "tiny-sweep", "experiment": "sweeps"})
    state = sweep(cfg, grid=GRID, max_parallel=1, return_state=True)
    result = state.result()
    runs = variant_runs(state.state_details.flow_run_id)
    assert sorted(r.name for r in runs) == sorted(["learning_rate=0.005", "learning_rate=0.002", "learning_rate=1e-07"])
    # All three were submitted at once on a 16-thread pool; the limit's one slot kept them apart.
    for earlier, later in zip(runs, runs[1:]):
        assert earlier.end_time <= later.start_time, (earlier.name, later.name)
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(limit_name("tiny-sweep", kind="sweep")).limit == 1

    client = MlflowClient()
    (version,) = client.search_model_versions("name = 'tiny-sweep'")
    assert (result.version, result.champion, result.promoted) == (str(version.version), "1", True)
    assert (
        result.winner in ("learning_rate=0.005", "learning_rate=0.002") and result.rows[0]["variant"] == result.winner
    )
    assert [r["rank"] for r in result.rows] == [1, 2, 3] and result.rows[-1]["variant"] == "learning_rate=1e-07"
    for key in ("perplexity", "score", "held-out loss", "peak memory MB", "trainable params", "s/step", "tokens/s"):
        assert all(key in row for row in result.rows), key
    # One parent run, a nested run per variant; the version comes from the winner's run.
    experiment = client.get_experiment_by_name("sweeps")
    runs_ = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs_ if r.data.tags["train_key"].startswith("sweep-")]
    nested = [r for r in runs_ if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["peftflow.sweep.variant"] for r in nested) == sorted(GRID_NAMES)
    winner_run = next(r for r in nested if r.data.tags["peftflow.sweep.variant"] == result.winner)
    assert version.run_id == winner_run.info.run_id
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert artifacts == {f"sweep/{n}" for n in ("report.md", "results.json", "loss_curves.png", "score_by_value.png")}
    assert f"**Winner:** `{result.winner}` beats runner-up" in open(result.report).read()
    with get_client(sync_client=True) as prefect:
        table = prefect.read_artifacts()
    mine = {a.key: a for a in table if a.flow_run_id == state.state_details.flow_run_id}
    assert len(json.loads(mine["sweep"].data)) == 3 and mine["sweep-report"].data.count("data:image/png;base64,") == 2

    # The same sweep again: every variant's training, merge and scoring come from the cache.
    again = sweep(cfg, grid=GRID, max_parallel=1, return_state=True)
    assert again.result().version == result.version
    for run in variant_runs(again.state_details.flow_run_id):
        states = task_states(run.id)
        assert (states["train-adapter"], states["merge-adapter"], states["evaluate-models"]) == ("Cached",) * 3, states
    assert len(client.search_model_versions("name = 'tiny-sweep'")) == 1

    # A sweep whose best variant does not beat the champion: its winner is registered, nothing promoted.
    weak = sweep(cfg, grid={"learning_rate": [1e-7, 2e-7]}, max_parallel=2)
    assert (weak.version, weak.champion, weak.promoted) == ("2", "1", False)
    assert str(client.get_model_version_by_alias("tiny-sweep", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("tiny-sweep", "challenger").version) == "2"
    assert "is worse than current champion" in open(weak.report).read()


GRID_NAMES = ["learning_rate=0.005", "learning_rate=0.002", "learning_rate=1e-07"]


def test_a_dpo_sweep_over_pref_loss_trains_each_loss_against_one_reference(harness, env, tiny_model, monkeypatch):
    """`peftflow sweep configs/dpo.yaml --grid pref_loss=sigmoid,ipo` on the tiny model: both variants
    read one reference file (computed once), the winner is registered with its held-out preference
    scores taken against the base the sweep scored."""
    from peftflow.paths import cache_dir

    monkeypatch.setenv("PEFTFLOW_HOME", str(env / "dpo-sweep-home"))  # an empty reference cache
    cfg = tiny_config(
        tiny_model,
        env,
        stage="dpo",
        dataset="demo_order_pairs",
        dataset_dir="builtin",
        max_samples=32,
        val_size=8,
        max_steps=3,
        registry={"name": "tiny-dpo-sweep", "experiment": "sweeps"},
    )
    result = sweep(cfg, grid={"pref_loss": ["sigmoid", "ipo"]}, max_parallel=1)
    assert sorted(r["variant"] for r in result.rows) == ["pref_loss=ipo", "pref_loss=sigmoid"]
    assert len(list(cache_dir("reference").glob("*.safetensors"))) == 1  # one reference for both losses
    version = MlflowClient().get_model_version("tiny-dpo-sweep", result.version)
    assert version.tags["pref_loss"] == result.winner.removeprefix("pref_loss=")
    assert 0 <= float(version.tags["metric.tuned.preference_accuracy"]) <= 1
