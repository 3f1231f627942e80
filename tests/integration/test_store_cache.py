"""Cache anywhere: with a run store (moto's S3), an unchanged rerun of the finetune flow on another
machine (another PEFTFLOW_HOME, nothing on its disk) finds train, merge and evaluate cached (Prefect's
task results live in the store) and fetches their outputs, and the prepared data, from the store;
a damaged or unsealed stored output is recomputed, never trusted."""

from __future__ import annotations

import json
import uuid

import pytest

from flows.finetune import finetune
from peftflow.store import MANIFEST, RunStore
from tests.integration.conftest import task_states, tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("prefect")]
STAGES = ("train-adapter", "merge-adapter", "evaluate-models")


@pytest.fixture
def store_url(s3_env) -> str:
    import boto3

    bucket = f"cache-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/peftflow"


def _run_on(home, monkeypatch, cfg):
    """The flow on a machine whose disk is `home` (its own PEFTFLOW_HOME and output dir)."""
    monkeypatch.setenv("PEFTFLOW_HOME", str(home))
    state = finetune(cfg.model_copy(update={"output_dir": str(home / "runs")}), return_state=True)
    states = task_states(state.state_details.flow_run_id)
    return state.result(), {s: states[s] for s in STAGES}


def test_unchanged_rerun_on_another_home_fetches_instead_of_recomputing(
    harness, env, tiny_model, store_url, monkeypatch
):
    cfg = tiny_config(tiny_model, env, registry={"name": "tiny-store"}, storage=store_url)
    first, states = _run_on(env / "home-a", monkeypatch, cfg)
    assert states == dict.fromkeys(STAGES, "Completed")
    store = RunStore(store_url)
    [key] = store.children("runs/tiny-store")
    stage = f"runs/tiny-store/{key}"
    assert {"adapter", "merged", "eval_report.json"} <= set(store.children(stage))
    assert "checkpoints" not in store.children(stage)  # scratch space gone once published
    [prepared] = store.children("cache/prepared")  # the tokenised data, by fingerprint
    assert "stats.json" in store.manifest(f"cache/prepared/{prepared}")

    again, states = _run_on(env / "home-c", monkeypatch, cfg)
    assert states == dict.fromkeys(STAGES, "Cached")
    local = env / "home-c" / "runs" / key
    assert (env / "home-c" / "cache" / "prepared" / prepared / "stats.json").is_file()
    assert (local / "merged" / "model.safetensors.index.json").is_file() and (local / "eval_report.json").is_file()
    assert (again.version, again.scores) == (first.version, first.scores)

    # A half-written merged model (one object cut in half) and an unsealed report: both recomputed.
    weights = f"{store.root}/{stage}/merged/model-00001-of-00002.safetensors"
    store.fs.pipe_file(weights, store.fs.cat_file(weights)[:1000])
    store.fs.rm_file(f"{store.root}/{stage}/eval_report.json/{MANIFEST}")
    third, states = _run_on(env / "home-d", monkeypatch, cfg)
    assert states == {"train-adapter": "Cached", "merge-adapter": "Completed", "evaluate-models": "Completed"}
    assert third.version == first.version
    assert store.manifest(f"{stage}/eval_report.json") and store.manifest(f"{stage}/merged")  # sealed again


@pytest.mark.parametrize("stage", ["dpo", "rm"])
def test_a_preference_run_on_another_home_is_fetched_too(harness, env, tiny_model, store_url, monkeypatch, stage):
    """A DPO run (its reference log-probs cached on the first machine only) and a reward model: the
    rerun elsewhere finds training, merge and scores in the store, the preference scores the same."""
    cfg = tiny_config(
        tiny_model,
        env,
        stage=stage,
        dataset="demo_order_pairs",
        dataset_dir="builtin",
        max_samples=32,
        val_size=8,
        registry={"name": f"tiny-store-{stage}"},
        promotion={"metric": "loss"},
        storage=store_url,
    )
    first, states = _run_on(env / f"{stage}-a", monkeypatch, cfg)
    assert states == dict.fromkeys(STAGES, "Completed")
    again, states = _run_on(env / f"{stage}-b", monkeypatch, cfg)
    assert states == dict.fromkeys(STAGES, "Cached")
    assert not (env / f"{stage}-b" / "cache" / "reference").exists()  # nothing trained, nothing to refer to
    # json: a reward model's perplexity is NaN, which equals nothing, itself included
    assert (again.version, json.dumps(again.scores)) == (first.version, json.dumps(first.scores))
