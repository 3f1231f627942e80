"""stage: rm on the tiny model: the reward head learns the pairs, merges into a plain
sequence-classification checkpoint that scores text with transformers alone, and is scored by held-out
pair accuracy against the base's new head."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from peftflow.builtin.preferences import make_pairs
from peftflow.config import RunConfig
from peftflow.data import prepare_dataset
from peftflow.evaluation.scoring import compare
from peftflow.merge import merge
from peftflow.models.heads import is_reward_model
from peftflow.serving.checks import check_dir
from peftflow.stages import get_workflow
from peftflow.training.run import run as train


def reward(tiny_model, root, **options) -> RunConfig:
    recipe = dict(
        model_name_or_path=tiny_model,
        dataset="pairs",
        dataset_dir=str(root),
        val_size=16,
        max_steps=12,
        learning_rate=5e-3,
        logging_steps=1,
        save_steps=100,
        per_device_train_batch_size=4,
        bf16_autocast=False,
    )
    return RunConfig(stage="rm", **(recipe | options))


@pytest.fixture
def pairs_dir(write_dataset):
    entry = {"file_name": "pairs.json", "ranking": True, "columns": {"prompt": "instruction", "query": "input"}}
    return write_dataset({"pairs": entry}, {"pairs.json": make_pairs(64)})


def test_reward_model_learns_merges_and_scores_text(tiny_model, pairs_dir, tmp_path):
    cfg = reward(tiny_model, pairs_dir)
    data = prepare_dataset(cfg, tiny_model)
    models = get_workflow(cfg).resolve(cfg)
    result = train(cfg, tiny_model, data.path, tmp_path / "run", trainer_factory=get_workflow(cfg).trainer(cfg, models))
    assert result.loss_history[-1][1] < result.loss_history[0][1]

    merged = merge(tiny_model, result.adapter_dir, tmp_path / "merged", tolerance=1e-4, train_cfg=cfg)
    assert merged.passed and is_reward_model(merged.merged_dir) and not is_reward_model(tiny_model)
    serving = check_dir(merged.merged_dir)  # no generation config to check: one score, the pad id set
    assert serving.ready and any("reward model" in line for line in serving.checked), serving

    # Held out: the trained head ranks the chosen side above the rejected one more often than the
    # base's new head (the one training started from), and the pair accuracy is the gate's score.
    report = compare({"base": tiny_model, "tuned": merged.merged_dir}, data.path, cfg, tmp_path / "report.json")
    base, tuned = report.models["base"], report.models["tuned"]
    assert report.metric == "pair_accuracy"
    assert tuned.score == tuned.preference["accuracy"] > base.score
    assert tuned.preference["margin"] > 0 and tuned.loss < base.loss < 2 * math.log(2)
    assert len(tuned.examples) == 16 and {e["score"] for e in tuned.examples} <= {0.0, 1.0}
    assert "eval.tuned.preference_accuracy" in report.flat_metrics()

    # The merged checkpoint is a plain transformers reward model: a chosen answer scores above its
    # rejected one, raw (no sigmoid), with nothing from peftflow or peft loaded.
    model = AutoModelForSequenceClassification.from_pretrained(merged.merged_dir)
    tokenizer = AutoTokenizer.from_pretrained(merged.merged_dir)
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    row = make_pairs(1, seed=99)[0]
    prompt = [{"role": "user", "content": f"{row['instruction']}\n{row['input']}"}]
    texts = [
        tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": row[side]}], tokenize=False)
        for side in ("chosen", "rejected")
    ]
    with torch.no_grad():
        scores = [float(model(**tokenizer(t, return_tensors="pt")).logits) for t in texts]
    assert scores[0] > scores[1]
    served = pipeline("text-classification", model=model, tokenizer=tokenizer)(texts)
    assert [s["score"] for s in served] == pytest.approx(scores, abs=1e-4)


def test_rm_refuses_what_reads_next_token_predictions(tiny_model, pairs_dir):
    for options, key in [
        (dict(finetuning_type="ia3"), "finetuning_type ia3"),
        (dict(merge=False), "merge: false"),
        (dict(promotion={"metric": "perplexity"}), "promotion.metric"),
        (dict(evaluation={"harness_tasks": ["peftflow_heldout"]}), "evaluation.harness_tasks"),
        (dict(num_processes=2), "stage: rm trains in one process"),
    ]:
        with pytest.raises(ValueError, match=key):
            reward(tiny_model, pairs_dir, **options)


def test_a_reward_model_trains_on_a_4bit_base_and_merges_into_the_unquantised_one(tiny_model, pairs_dir, tmp_path):
    cfg = reward(tiny_model, pairs_dir, quantization_bit=4, max_steps=3)
    data = prepare_dataset(cfg, tiny_model)
    factory = get_workflow(cfg).trainer(cfg, get_workflow(cfg).resolve(cfg))
    result = train(cfg, tiny_model, data.path, tmp_path / "run", trainer_factory=factory)
    merged = merge(tiny_model, result.adapter_dir, tmp_path / "merged", tolerance=1e-4, train_cfg=cfg)
    # compared with the 4-bit model as trained by its score alone: it predicts no next token
    assert merged.passed and 0 < merged.max_abs_logit_diff_vs_quantized < 1
    assert merged.top1_agreement_vs_quantized is None and is_reward_model(merged.merged_dir)
