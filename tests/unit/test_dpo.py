"""stage: dpo on the tiny model: the preference trainer against cached reference log-probs, its
curves, and held-out pairs scored by implicit reward."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from peftflow.builtin.preferences import make_pairs
from peftflow.config import RunConfig
from peftflow.data import prepare_dataset
from peftflow.evaluation.scoring import compare
from peftflow.merge import merge
from peftflow.paths import cache_dir
from peftflow.stages import get_workflow
from peftflow.training.run import run as train


def dpo(tiny_model, root: Path, **options) -> RunConfig:
    recipe = dict(
        model_name_or_path=tiny_model,
        dataset="pairs",
        dataset_dir=str(root),
        val_size=8,
        max_steps=6,
        learning_rate=5e-3,
        logging_steps=1,
        save_steps=100,
        per_device_train_batch_size=4,
        bf16_autocast=False,
    )
    return RunConfig(stage="dpo", **(recipe | options))


@pytest.fixture
def pairs_dir(write_dataset):
    entry = {"file_name": "pairs.json", "ranking": True, "columns": {"prompt": "instruction", "query": "input"}}
    return write_dataset({"pairs": entry}, {"pairs.json": make_pairs(40)})


def reference_files() -> set[str]:
    folder = cache_dir("reference")
    return {p.name for p in folder.glob("*.safetensors")} if folder.is_dir() else set()


def test_dpo_starts_at_log2_learns_the_pairs_and_reuses_the_reference(tiny_model, pairs_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTFLOW_HOME", str(tmp_path / "home"))  # an empty cache: the first run computes
    cfg = dpo(tiny_model, pairs_dir)
    data = prepare_dataset(cfg, tiny_model)
    models = get_workflow(cfg).resolve(cfg)
    before = reference_files()
    result = train(
        cfg, tiny_model, data.path, tmp_path / "sigmoid", trainer_factory=get_workflow(cfg).trainer(cfg, models)
    )
    made = reference_files() - before
    assert len(made) == 1  # one file of reference log-probs for this model and data
    # The adapter starts as a no-op: policy = reference, so every pair's loss is -log(sigmoid(0)) = log 2.
    assert result.loss_history[0][1] == pytest.approx(math.log(2), abs=1e-3)
    assert result.loss_history[-1][1] < result.loss_history[0][1]

    # Another loss on the same pairs reads the cached reference instead of computing it again.
    cached = cache_dir("reference") / made.pop()
    stamp = cached.stat().st_mtime_ns
    ipo = dpo(tiny_model, pairs_dir, pref_loss="ipo")
    train(ipo, tiny_model, data.path, tmp_path / "ipo", trainer_factory=get_workflow(ipo).trainer(ipo, models))
    assert cached.stat().st_mtime_ns == stamp and reference_files() - before == {cached.name}

    # Held out: the fine-tune ranks the chosen answers higher than the base does (by implicit reward).
    merged = merge(tiny_model, result.adapter_dir, tmp_path / "merged", tolerance=1e-3)
    report = compare(
        {"base": tiny_model, "tuned": merged.merged_dir},
        data.path,
        cfg,
        tmp_path / "eval_report.json",
        preference=get_workflow(cfg).preference(cfg),
    )
    tuned = report.models["tuned"]
    assert len(tuned.pairs) == 8 and tuned.preference["accuracy"] > 0.5 and tuned.preference["margin"] > 0
    assert report.models["base"].preference == {}  # the reference itself has no implicit reward
    assert report.flat_metrics()["eval.tuned.preference_accuracy"] == tuned.preference["accuracy"]


def test_dpo_logs_reward_curves(tiny_model, pairs_dir, tmp_path):
    cfg = dpo(tiny_model, pairs_dir, max_steps=2)
    data = prepare_dataset(cfg, tiny_model)
    models = get_workflow(cfg).resolve(cfg)
    seen = []

    class Logs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs or {}))

    train(
        cfg,
        tiny_model,
        data.path,
        tmp_path,
        callbacks=(Logs(),),
        trainer_factory=get_workflow(cfg).trainer(cfg, models),
    )
    steps = [s for s in seen if "loss" in s]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen"):
        assert all(key in s for s in steps), key
    assert steps[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-4)


def test_qlora_policy_starts_from_its_own_4bit_reference(tiny_model, pairs_dir, tmp_path):
    """QLoRA as the policy: the reference is the 4-bit base with the adapter off (LLaMA-Factory's),
    its log-probs cached apart from the fp32 base's (the load settings are in the cache key)."""
    cfg = dpo(tiny_model, pairs_dir, quantization_bit=4, max_steps=3)
    data = prepare_dataset(cfg, tiny_model)
    models = get_workflow(cfg).resolve(cfg)
    before = reference_files()
    result = train(cfg, tiny_model, data.path, tmp_path, trainer_factory=get_workflow(cfg).trainer(cfg, models))
    assert result.loss_history[0][1] == pytest.approx(math.log(2), abs=1e-3)
    assert len(reference_files() - before) == 1


def test_an_explicit_reference_model_is_the_one_scored_against(tiny_model, pairs_dir, tmp_path):
    """ref_model: another model's log-probs are the reference, so the untrained policy already has
    non-zero rewards (its first loss is not log 2), and the evaluation scores that reference."""
    torch.manual_seed(0)
    other = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():  # another model: the tiny one with every weight moved a little
        for weight in other.parameters():
            weight.add_(torch.randn_like(weight) * 0.05)
    other.save_pretrained(tmp_path / "reference")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path / "reference")
    cfg = dpo(tiny_model, pairs_dir, ref_model=str(tmp_path / "reference"), max_steps=2, pref_beta=1.0)
    data = prepare_dataset(cfg, tiny_model)
    models = get_workflow(cfg).resolve(cfg)
    assert set(models.extras) == {"reference"}
    result = train(cfg, tiny_model, data.path, tmp_path / "run", trainer_factory=get_workflow(cfg).trainer(cfg, models))
    assert abs(result.loss_history[0][1] - math.log(2)) > 1e-3
    assert get_workflow(cfg).evaluation_models(models) == {"reference": models.extras["reference"].path}
    assert get_workflow(cfg).preference(cfg)[1] == "reference"
