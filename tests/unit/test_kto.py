"""stage: kto on the tiny model: LLaMA-Factory's KTO feedback rows (sharegpt with a kto_tag column),
refused row by row, and the KTO trainer against cached reference log-probs."""

from __future__ import annotations

import json

import pytest
from datasets import load_from_disk
from transformers import TrainerCallback

from peftflow.builtin.datasets import INSTRUCTION, make_rows
from peftflow.builtin.preferences import FEEDBACK_SEED, PAIRS_SEED, make_feedback, make_pairs, reversed_name
from peftflow.config import RunConfig
from peftflow.data import data_report, prepare_dataset
from peftflow.errors import UserError
from peftflow.evaluation.harness import write_heldout_task
from peftflow.evaluation.scoring import score_model
from peftflow.paths import cache_dir
from peftflow.stages import get_workflow
from peftflow.training.run import run as train

ENTRY = {  # LLaMA-Factory's kto_en_demo entry
    "file_name": "kto.json",
    "formatting": "sharegpt",
    "columns": {"messages": "messages", "kto_tag": "label"},
    "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
}


def feedback_rows(n: int) -> list[dict]:
    """Order prompts answered in the house style (desirable) or with the name reversed (not)."""
    rows = []
    for i, pair in enumerate(make_pairs(n)):
        good = i % 2 == 0
        answer = pair["chosen"] if good else pair["rejected"]
        prompt = f"{pair['instruction']}\n{pair['input']}"
        rows.append(
            {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], "label": good}
        )
    return rows


def kto(tiny_model, root, **options) -> RunConfig:
    recipe = dict(
        model_name_or_path=tiny_model,
        dataset="feedback",
        dataset_dir=str(root),
        val_size=4,
        max_steps=6,
        learning_rate=5e-3,
        logging_steps=1,
        save_steps=100,
        per_device_train_batch_size=4,
        bf16_autocast=False,
    )
    return RunConfig(stage="kto", **(recipe | options))


def test_feedback_rows_keep_their_tag_and_bad_ones_are_named(tiny_model, write_dataset):
    rows = feedback_rows(12)
    rows[3]["label"] = "yes"
    del rows[5]["label"]
    root = write_dataset(
        {"feedback": ENTRY, "plain": {**ENTRY, "columns": {"messages": "messages"}}}, {"kto.json": rows}
    )
    report = data_report(kto(tiny_model, root), tiny_model)
    assert report.dropped == {"field 'label' is not true or false": 2}
    assert "row 4: field 'label' is not true or false (got 'yes')" in report.problems[0]
    assert "row 6: field 'label' is not true or false (missing)" in report.problems[0]
    with pytest.raises(UserError, match="dataset 'plain' in .* maps no kto_tag column; stage: kto reads feedback"):
        prepare_dataset(kto(tiny_model, root, dataset="plain"), tiny_model)
    del rows[3], rows[4]
    root = write_dataset({"feedback": ENTRY}, {"kto.json": rows})
    data = prepare_dataset(kto(tiny_model, root), tiny_model)
    train_rows = load_from_disk(f"{data.path}/train")
    assert data.train_rows == 6 and sorted(set(train_rows["kto_tag"])) == [False, True]


def test_the_builtin_feedback_is_the_order_task_marked_house_style_or_reversed(tiny_model):
    rows = make_feedback(64)
    assert rows == make_feedback(64)  # the same rows on every machine
    records = make_rows(64, FEEDBACK_SEED)
    for row, record in zip(rows, records):
        user, answer = row["messages"]
        assert user == {"role": "user", "content": f"{INSTRUCTION}\n{record['input']}"}
        assert answer["role"] == "assistant"
        # desirable: the house style ("First Last"); undesirable: the name reversed ("Last, First")
        assert answer["content"] == (record["output"] if row["label"] else reversed_name(record["output"]))
    assert sum(row["label"] for row in rows) == 32  # half each, shuffled
    assert [row["label"] for row in rows[:8]] != [True, False] * 4
    # new messages: apart from the SFT rows and the pairs
    seen = {r["input"] for r in make_rows(640)} | {p["input"] for p in make_pairs(1024, PAIRS_SEED)}
    assert not seen & {r["input"] for r in records}

    cfg = RunConfig(stage="kto", dataset="demo_order_feedback", dataset_dir="builtin", max_samples=64, val_size=8)
    data = prepare_dataset(cfg, tiny_model)
    assert (data.train_rows, data.eval_rows, data.dropped) == (56, 8, 0)
    train_rows = load_from_disk(f"{data.path}/train")
    assert sorted(set(train_rows["kto_tag"])) == [False, True]


def test_held_out_feedback_is_scored_on_its_desirable_answers_only(tiny_model, write_dataset, tmp_path):
    """An undesirable answer is no reference: a model that says it earns neither score nor loss for it."""
    rows = feedback_rows(24)
    root = write_dataset({"feedback": ENTRY}, {"kto.json": rows})
    cfg = kto(tiny_model, root, val_size=10, evaluation={"max_samples": 10, "max_new_tokens": 2})
    data = prepare_dataset(cfg, tiny_model)
    held_out = load_from_disk(f"{data.path}/eval")
    desirable = [ref for ref, tag in zip(held_out["reference"], held_out["kto_tag"]) if tag]
    assert 0 < len(desirable) < len(held_out)
    good = {r["messages"][1]["content"] for r in rows if r["label"]}
    scores = score_model("base", tiny_model, data.path, cfg)
    assert [e["reference"] for e in scores.examples] == desirable and set(desirable) <= good
    task = write_heldout_task(data.path, tiny_model, cfg, tmp_path / "harness")
    lines = (task / "heldout.jsonl").read_text().splitlines()
    assert [json.loads(line)["reference"] for line in lines] == desirable


def test_kto_starts_at_the_reference_point_and_learns(tiny_model, write_dataset, tmp_path):
    root = write_dataset({"feedback": ENTRY}, {"kto.json": feedback_rows(36)})
    cfg = kto(tiny_model, root)
    data = prepare_dataset(cfg, tiny_model)
    models = get_workflow(cfg).resolve(cfg)
    seen = []

    class Logs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs or {}))

    files = set(cache_dir("reference").glob("*")) if cache_dir("reference").is_dir() else set()
    result = train(
        cfg,
        tiny_model,
        data.path,
        tmp_path / "a",
        callbacks=(Logs(),),
        trainer_factory=get_workflow(cfg).trainer(cfg, models),
    )
    # The adapter starts as a no-op: every reward and the KL estimate are 0, each row's loss 1 - sigmoid(0).
    assert result.loss_history[0][1] == pytest.approx(0.5, abs=1e-3)
    assert result.loss_history[-1][1] < result.loss_history[0][1]
    steps = [entry for entry in seen if "loss" in entry]
    assert all("kl" in s for s in steps) and steps[0]["kl"] == pytest.approx(0.0, abs=1e-4)
    # a step's rewards of each kind: logged when its batch held such rows
    assert any("rewards/chosen" in s for s in steps) and any("rewards/rejected" in s for s in steps)
    made = set(cache_dir("reference").glob("*")) - files
    assert len(made) == 1
    stamp = made.copy().pop().stat().st_mtime_ns
    heavier = kto(tiny_model, root, kto_rejected_weight=2.0)
    train(
        heavier, tiny_model, data.path, tmp_path / "b", trainer_factory=get_workflow(heavier).trainer(heavier, models)
    )
    assert made.pop().stat().st_mtime_ns == stamp  # the reference's log-probs were read, not computed again


def test_kto_keys_are_refused_elsewhere_and_pref_beta_is_shared():
    with pytest.raises(ValueError, match="kto_chosen_weight only apply to stage: kto"):
        RunConfig(stage="dpo", kto_chosen_weight=2.0)
    with pytest.raises(ValueError, match="pref_beta only apply to stage: dpo or kto"):
        RunConfig(pref_beta=0.2)
    assert RunConfig(stage="kto", pref_beta=0.2).pref_beta == 0.2


@pytest.mark.parametrize("stage", ["dpo", "kto"])
def test_the_preference_stages_train_in_one_process(stage):
    with pytest.raises(ValueError, match=f"stage: {stage} trains in one process .*got 2 and 1"):
        RunConfig(stage=stage, num_processes=2)
