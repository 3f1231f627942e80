"""Preference pairs read as LLaMA-Factory writes them (`"ranking": true`, alpaca and sharegpt
shapes), prepared as chosen and rejected sides of one prompt, and refused row by row."""

from __future__ import annotations

import pytest
from datasets import load_from_disk

from peftflow.config import RunConfig
from peftflow.data import data_report, prepare_dataset
from peftflow.errors import UserError

ALPACA = {"file_name": "pairs.json", "ranking": True, "columns": {"prompt": "instruction", "query": "input"}}
SHAREGPT = {
    "file_name": "dpo_demo.json",
    "formatting": "sharegpt",
    "ranking": True,
    "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
}


def alpaca_pairs(n: int) -> list[dict]:
    return [
        {"instruction": f"Count to {i}.", "input": "", "chosen": " ".join(map(str, range(1, i + 2))), "rejected": "no"}
        for i in range(n)
    ]


def sharegpt_pairs(n: int) -> list[dict]:
    return [
        {
            "conversations": [{"from": "human", "value": f"Name a colour ({i})."}],
            "chosen": {"from": "gpt", "value": "Blue."},
            "rejected": {"from": "gpt", "value": f"I cannot help with {i}."},
        }
        for i in range(n)
    ]


def dpo(root, dataset: str, **options) -> RunConfig:
    return RunConfig(stage="dpo", dataset=dataset, dataset_dir=str(root), val_size=2, **options)


@pytest.mark.parametrize("entry, rows", [(ALPACA, alpaca_pairs(8)), (SHAREGPT, sharegpt_pairs(8))])
def test_pairs_prepare_as_two_sides_of_one_prompt(tiny_model, write_dataset, entry, rows):
    root = write_dataset({"pairs": entry}, {entry["file_name"]: rows})
    data = prepare_dataset(dpo(root, "pairs"), tiny_model)
    assert (data.train_rows, data.eval_rows, data.dropped) == (6, 2, 0)
    for split in ("train", "eval"):
        rows_ = load_from_disk(f"{data.path}/{split}")
        assert {"input_ids", "labels", "rejected_input_ids", "rejected_labels"} <= set(rows_.column_names)
        for row in rows_:
            chosen, rejected = row["input_ids"], row["rejected_input_ids"]
            prompt = next(i for i, label in enumerate(row["labels"]) if label != -100)
            # the same prompt, then different answers; only the answers are learned
            assert chosen[:prompt] == rejected[:prompt] and chosen != rejected
            assert row["rejected_labels"][:prompt] == [-100] * prompt
            assert any(label != -100 for label in row["rejected_labels"])
    held_out = load_from_disk(f"{data.path}/eval")
    chosen = {r["chosen"]["value"] if isinstance(r["chosen"], dict) else r["chosen"] for r in rows}
    assert set(held_out["reference"]) <= chosen  # the held-out answer scored by the task metric: the chosen one


def test_each_bad_pair_is_named(tiny_model, write_dataset):
    rows = alpaca_pairs(6)
    rows[1]["rejected"] = rows[1]["chosen"]
    del rows[3]["rejected"]
    rows[4]["chosen"] = "  "
    root = write_dataset({"pairs": ALPACA}, {"pairs.json": rows})
    report = data_report(dpo(root, "pairs"), tiny_model)
    assert report.dropped == {"chosen equals rejected": 1, "field 'rejected' is missing": 1, "empty chosen answer": 1}
    assert len(report.problems) == 1
    line = report.problems[0]
    assert "pairs.json: 3 invalid rows: row 2: chosen equals rejected" in line and "row 4:" in line and "row 5:" in line
    with pytest.raises(UserError, match="row 2: chosen equals rejected"):
        prepare_dataset(dpo(root, "pairs"), tiny_model)


def test_a_sharegpt_answer_must_be_one_assistant_message(tiny_model, write_dataset):
    rows = sharegpt_pairs(4)
    rows[0]["chosen"] = {"from": "human", "value": "Blue."}
    rows[2]["rejected"] = [{"from": "gpt", "value": "a list"}]
    root = write_dataset({"pairs": SHAREGPT}, {"dpo_demo.json": rows})
    report = data_report(dpo(root, "pairs"), tiny_model)
    assert report.dropped == {
        "field 'chosen' is not one answer message": 1,
        "field 'rejected' is not one answer message": 1,
    }


def test_a_ranking_dataset_is_read_by_the_pair_stages_only(tiny_model, write_dataset):
    root = write_dataset(
        {"pairs": ALPACA, "qa": {"file_name": "qa.json"}},
        {"pairs.json": alpaca_pairs(4), "qa.json": [{"instruction": "q", "output": "a"}] * 4},
    )
    with pytest.raises(UserError) as sft:
        prepare_dataset(RunConfig(dataset="pairs", dataset_dir=str(root)), tiny_model)
    assert str(sft.value) == (
        f"dataset 'pairs' in {root}/dataset_info.json is preference pairs; stage: sft reads conversations: "
        "a conversation ending in the answer to learn"
    )
    with pytest.raises(UserError, match="dataset 'qa' in .* is not preference pairs .*; stage: dpo reads pairs"):
        prepare_dataset(dpo(root, "qa"), tiny_model)
