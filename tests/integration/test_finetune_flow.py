"""The whole finetune flow on the tiny model, under Prefect's test harness with a SQLite MLflow."""

import json
import re

import mlflow
import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, LogFilter, LogFilterFlowRunId

from flows.finetune import finetune
from tests.integration.conftest import task_states, tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("prefect")]


def artifacts(key) -> list:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def run_logs(flow_run_id) -> list:
    """The flow run's log lines, as the dashboard's Logs tab reads them."""
    with get_client(sync_client=True) as client:
        return client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)


def assert_logs_tell_the_story(flow_run_id) -> None:
    logs = run_logs(flow_run_id)
    messages = [log.message for log in logs]
    # No library noise: bytecode listings (dill's dis.dis under log_prints), Python warnings, warning records.
    assert [m for m in messages if "LOAD_GLOBAL" in m or "RETURN_VALUE" in m or "Warning:" in m] == []
    assert [log.message for log in logs if log.level >= 30] == []
    steps = [m for m in messages if m.startswith("step ")]
    assert [m.split()[1] for m in steps] == ["2/6", "4/6", "6/6"]
    assert all(re.fullmatch(r"step \d+/6 loss \d+\.\d{4} lr \d\.\de[-+]\d\d eta \d+:\d\d:\d\d", m) for m in steps), (
        steps
    )
    for line in (
        "training 6 steps",
        "training done: 6 steps",
        "scoring tuned: generating on 4 rows (max_new_tokens 8)",
        "generated 4/4 rows",
    ):
        assert line in messages, (line, messages)
    for start in ("scoring base: loss on ", "scored base: loss ", "scored tuned: loss "):
        assert any(m.startswith(start) for m in messages), (start, messages)
    progress = [a for a in artifacts("training-progress") if a.flow_run_id == flow_run_id]
    assert len(progress) == 1 and progress[0].data == 100.0
    assert re.fullmatch(r"Training: step 6/6 loss \d+\.\d{4} lr \S+ eta 0:00:00", progress[0].description)


def test_finetune_registers_promotes_and_reloads(harness, env, tiny_model):
    cfg = tiny_config(tiny_model, env)
    state = finetune(cfg, return_state=True)
    result = state.result()
    assert (result.name, result.version, result.champion, result.promoted) == ("tiny-itest", "1", "1", True)
    assert result.scores["tuned"]["perplexity"] < result.scores["base"]["perplexity"]

    client = MlflowClient()
    version = client.get_model_version_by_alias("tiny-itest", "champion")
    assert str(version.version) == "1"
    assert str(client.get_model_version_by_alias("tiny-itest", "challenger").version) == "1"
    for tag in (
        "base_model",
        "base_model_fingerprint",
        "data_fingerprint",
        "method",
        "prefect_flow_run_id",
        "code_version",
    ):
        assert version.tags[tag], tag
    assert version.tags["prefect_flow_run_id"] == str(state.state_details.flow_run_id)

    run = client.get_run(result.run_id)
    assert run.data.params["lora_rank"] == "8" and run.data.params["registry.name"] == "tiny-itest"
    losses = client.get_metric_history(result.run_id, "loss")
    assert [m.step for m in losses] == [2, 4, 6]
    assert {"learning_rate", "supervised_tokens_per_s", "data.train_rows", "data.dropped_rows"} <= set(run.data.metrics)
    assert run.info.status == "FINISHED"
    artifact_paths = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"adapter", "eval_report.json", "loss_curve.png"} <= artifact_paths

    pipe = mlflow.transformers.load_model("models:/tiny-itest@champion")
    out = pipe("Hello", max_new_tokens=5, do_sample=False)
    assert isinstance(out[0]["generated_text"], str)

    assert "base" in artifacts("finetune-summary")[0].data
    assert_logs_tell_the_story(state.state_details.flow_run_id)

    # What a person sees in MLflow: a named run described by the summary, linked to its flow run
    # and back; the version described by the summary and its model card
    flow_run_id = str(state.state_details.flow_run_id)
    assert run.info.run_name == f"tiny-itest-{version.tags['train_key']}"
    assert run.data.tags["mlflow.note.content"] == result.summary
    assert run.data.tags["peftflow.prefect_flow_run_url"].endswith(f"/runs/flow-run/{flow_run_id}")
    assert any(result.run_id in a.data for a in artifacts("mlflow-run"))  # other tests of the session wrote theirs
    assert version.description.startswith(result.summary) and "# Model card: tiny-itest" in version.description
    assert [m.step for m in client.get_metric_history(result.run_id, "train_loss")] == [6]  # the Trainer's only

    # Same inputs again: the expensive steps come from Prefect's cache, nothing new is registered.
    again = finetune(cfg, return_state=True)
    states = task_states(again.state_details.flow_run_id)
    assert states["train-adapter"] == "Cached" and states["merge-adapter"] == "Cached"
    assert again.result().version == "1"
    assert len(client.search_model_versions("name='tiny-itest'")) == 1
    assert len(json.loads(client.get_model_version("tiny-itest", "1").tags["alias.challenger.history"])) == 1
    assert client.get_model_version("tiny-itest", "1").description.count("# Model card:") == 1


def test_a_worse_challenger_does_not_take_champion(harness, env, tiny_model):
    first = finetune(tiny_config(tiny_model, env, registry={"name": "tiny-gate"}))
    assert first.champion == "1"
    # One step at a tiny learning rate: barely better than base, far worse than the champion.
    worse = finetune(tiny_config(tiny_model, env, registry={"name": "tiny-gate"}, max_steps=1, learning_rate=1e-6))
    assert worse.version == "2" and not worse.promoted and worse.champion == "1"
    assert "champion" in worse.scores
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("tiny-gate", "challenger").version) == "2"


def test_guard_set_loss_gates_promotion(harness, env, tiny_model):
    def run(tolerance: float):
        return finetune(
            tiny_config(
                tiny_model,
                env,
                registry={"name": "tiny-guard"},
                promotion={"metric": "perplexity", "guard_dataset": "demo_general", "guard_tolerance": tolerance},
            )
        )

    # A tolerance of -1e6 asks the guard loss to fall by a million nats: the real losses refuse it.
    refused = run(-1e6)
    assert not refused.promoted and refused.champion is None
    assert "guard-set loss regressed" in refused.summary
    metrics = MlflowClient().get_run(refused.run_id).data.metrics
    tuned, base = metrics["guard.tuned.loss"], metrics["guard.incumbent.loss"]
    assert 0 < tuned < 50 and 0 < base < 50 and tuned != base
    assert f"guard-set loss regressed from {base:.4f} to {tuned:.4f}" in refused.summary

    # The same training under a loose guard: the cached steps are reused and the version promoted.
    allowed = run(1e6)
    assert (allowed.version, allowed.promoted, allowed.champion) == ("1", True, "1")
    assert f"guard-set loss {tuned:.4f} vs {base:.4f}" in allowed.summary


def test_unknown_guard_dataset_stops_before_training(harness, env, tiny_model):
    cfg = tiny_config(tiny_model, env, promotion={"guard_dataset": "demo_genral"})
    state = finetune(cfg, return_state=True)
    assert state.is_failed() and "demo_genral" in state.message
    assert not (env / "runs").exists()
