"""Distillation through the finetune flow: a pruned student learns from the teacher and is
registered as its own model with the teacher in its lineage."""

import pytest
from mlflow import MlflowClient

from flows.finetune import finetune
from flows.retrain import retrain
from peftflow.paths import cache_dir
from tests.integration.conftest import task_states, tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("prefect")]


def test_pruned_student_distils_and_is_registered(harness, env, tiny_model):
    # With teacher-labelled prompts: the random teacher's greedy answers are blank lines, sampled ones text.
    cfg = tiny_config(
        tiny_model,
        env,
        stage="distill",
        teacher=tiny_model,
        student_layers=1,
        teacher_topk=32,
        kd_ratio=0.8,
        registry={"name": "tiny-student"},
        kd_unlabeled_dataset="demo_order_prompts",
        kd_label_temperature=1.0,
        kd_label_max_new_tokens=4,
    )

    state = finetune(cfg, return_state=True)
    result = state.result()
    assert task_states(state.state_details.flow_run_id)["add-stage-rows"] == "Completed"
    assert {"teacher", "base", "tuned"} <= set(result.scores)
    assert "teacher retention" in result.summary

    client = MlflowClient()
    version = client.get_model_version("tiny-student", result.version)
    assert version.tags["teacher"] == tiny_model and version.tags["student_layers"] == "1"
    assert version.tags["stage"] == "distill"
    run = client.get_run(result.run_id)
    assert {"kd_kl", "kd_ce", "eval.teacher_retention"} <= set(run.data.metrics)
    # The demo's train split plus the prompts the teacher answered (a blank sampled answer is dropped).
    assert 608 + 400 < run.data.metrics["data.train_rows"] <= 608 + 512
    kl = [m.value for m in client.get_metric_history(result.run_id, "kd_kl")]
    assert kl[-1] < kl[0]

    # Nothing changed: retrain knows the teacher-labelled data's fingerprint without generating, and skips.
    assert result.promoted
    skipped = retrain(cfg, return_state=True)
    assert skipped.message.startswith("Skipped: data, base model and config fingerprints match champion")

    # The teacher's top-k outputs were cached by teacher + data + k; a retrain with another
    # learning rate reuses them (same cache file, not recomputed).
    caches = sorted(cache_dir("teacher").glob("*-k32.safetensors"))
    assert len(caches) == 1
    mtime = caches[0].stat().st_mtime_ns
    again = finetune(cfg.model_copy(update={"learning_rate": 1e-3}), return_state=True)
    assert task_states(again.state_details.flow_run_id)["train-adapter"] == "Completed"
    assert caches[0].stat().st_mtime_ns == mtime
