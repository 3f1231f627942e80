"""Train -> merge -> evaluate on the tiny model: loss falls, merge is exact, scores per example."""

import json
import math

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from peftflow import merge
from peftflow.config import RunConfig
from peftflow.data import prepare_dataset
from peftflow.evaluation.metrics import METRICS
from peftflow.evaluation.report import EvalReport
from peftflow.evaluation.scoring import compare, heldout_loss
from peftflow.training.run import run as train_run
from peftflow.training.trainer import MetricsCallback


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    cfg = RunConfig(
        model_name_or_path=tiny_model,
        max_steps=12,
        learning_rate=5e-3,
        logging_steps=2,
        save_steps=6,
        per_device_train_batch_size=4,
        evaluation={"metric": "json_fields", "max_samples": 4, "max_new_tokens": 8, "batch_size": 4},
    )
    data = prepare_dataset(cfg, tiny_model)
    logged = []
    result = train_run(
        cfg, tiny_model, data.path, out, callbacks=(MetricsCallback(lambda s, m: logged.append((s, m))),)
    )
    return cfg, data, result, logged, out


def test_training_lowers_loss_and_reports_metrics(trained):
    _, _, result, logged, _ = trained
    losses = [loss for _, loss in result.loss_history]
    assert result.steps == 12 and len(losses) == 6
    assert losses[-1] < losses[0]
    steps_with_speed = [s for s, m in logged if "supervised_tokens_per_s" in m and "learning_rate" in m]
    assert steps_with_speed == [2, 4, 6, 8, 10, 12]
    assert 0 < result.trainable_params < result.total_params
    # What ran and what it cost: recorded for MLflow (metrics + tags in tasks/train_adapter.py).
    metrics = result.metrics()
    assert 0 < metrics["model_footprint_mb"] < metrics["peak_memory_mb"] and metrics["seconds_per_step"] > 0
    assert result.gradient_checkpointing.startswith("off (auto: ")
    # Under bf16 autocast (a machine with fast bf16) the frozen base is held in bf16, the adapter in fp32.
    assert result.compute in {"float32", "bfloat16 base, float32 trainable + bf16 autocast"}


def test_adapter_reloads_with_plain_peft(trained, tiny_model):
    _, _, result, _, _ = trained
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = PeftModel.from_pretrained(base, result.adapter_dir)
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_resume_continues_from_the_last_checkpoint(trained, tiny_model, mlflow_home):
    from mlflow import MlflowClient

    from peftflow.mlflow_io.tracking import log_metrics, start_run

    cfg, data, first, _, out = trained
    # A longer run in the same directory starts from checkpoint-12, not step 0. It trains one step,
    # fewer than logging_steps, and still logs its loss at that last step (to MLflow as the flow does).
    longer = cfg.model_copy(update={"max_steps": 13, "logging_steps": 20})
    run_id = start_run(longer, {})
    sink = MetricsCallback(lambda step, metrics: log_metrics(run_id, metrics, step=step))
    again = train_run(longer, tiny_model, data.path, out, callbacks=(sink,))
    assert again.resumed_from_step == 12
    assert [s for s, _ in again.loss_history if s > 12] == [13]
    assert [m.step for m in MlflowClient().get_metric_history(run_id, "loss")] == [13]
    # one meaning per name: `train_loss` is the Trainer's run mean; peftflow's last loss is `final_loss`
    assert again.metrics()["final_loss"] == again.loss_history[-1][1] and "train_loss" not in again.metrics()


def test_merge_matches_adapter_logits_and_loads_plainly(trained, tiny_model, tmp_path):
    _, _, result, _, _ = trained
    merged = merge.merge(tiny_model, result.adapter_dir, tmp_path / "merged", tolerance=1e-4)
    assert merged.passed and merged.max_abs_logit_diff <= 1e-4
    plain = AutoModelForCausalLM.from_pretrained(merged.merged_dir)
    assert not any("lora" in n for n, _ in plain.named_parameters())
    assert json.loads((tmp_path / "merged" / "merge_fidelity.json").read_text())["passed"]


def test_merge_fails_past_tolerance(trained, tiny_model, tmp_path):
    _, _, result, _, _ = trained
    with pytest.raises(merge.MergeFidelityError):
        merge.merge(tiny_model, result.adapter_dir, tmp_path / "merged", tolerance=1e-12)


def test_evaluate_keeps_per_example_scores(trained, tiny_model, tmp_path):
    cfg, data, _, _, _ = trained
    report = compare({"base": tiny_model}, data.path, cfg, tmp_path / "r.json")
    base = report.models["base"]
    assert len(base.examples) == 4 and all(0 <= e["score"] <= 1 for e in base.examples)
    assert math.isclose(base.perplexity, math.exp(base.loss), rel_tol=1e-3)
    assert EvalReport.from_json(tmp_path / "r.json").models["base"].score == base.score


@pytest.mark.parametrize(
    "metric, pred, ref, expected",
    [
        ("exact_match", " yes ", "yes", 1.0),
        ("exact_match", "no", "yes", 0.0),
        ("token_f1", "the red lamp", "red lamp", 0.8),
        ("json_fields", '{"a": 1, "b": 2}', '{"a": 1, "b": 3}', 0.5),
        ("json_fields", "not json", '{"a": 1}', 0.0),
    ],
)
def test_metrics(metric, pred, ref, expected):
    assert METRICS[metric](pred, ref) == pytest.approx(expected)


def test_heldout_loss_ignores_masked_positions():
    class Uniform(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return type("O", (), {"logits": torch.zeros(*input_ids.shape, 10)})()

    rows = {"input_ids": [[1, 2, 3], [4, 5]], "labels": [[-100, 2, 3], [-100, 5]]}
    from datasets import Dataset

    loss = heldout_loss(Uniform(), Dataset.from_dict(rows), pad_id=0, batch_size=2)
    assert loss == pytest.approx(math.log(10))
