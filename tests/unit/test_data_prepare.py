"""prepare_dataset / data_report: caching, masking, cutoff, sampling, splitting, fingerprints."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from datasets import load_from_disk
from transformers import AutoTokenizer

from peftflow.config import RunConfig, parse_config
from peftflow.data import data_report, end_of_turn_token_id, prepare_dataset
from peftflow.data.prepare import prepared_report
from peftflow.errors import UserError

IGNORE = -100


def qa_rows(n: int, tag: str = "") -> list[dict]:
    return [{"instruction": f"question {tag}{i}", "output": f"answer {tag}{i}"} for i in range(n)]


def config(root: Path, **options) -> RunConfig:
    return RunConfig(dataset=options.pop("dataset", "qa"), dataset_dir=str(root), **options)


def learned(labels: list[int]) -> list[int]:
    return [t for t in labels if t != IGNORE]


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def demo(tiny_model):
    return prepare_dataset(RunConfig(dataset="demo_orders", dataset_dir="builtin"), tiny_model)


def test_builtin_demo_prepares_then_reuses_the_cache(tiny_model, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("PEFTFLOW_HOME", str(tmp_path))  # an empty cache: the first call must build
    cfg = RunConfig(dataset="demo_orders", dataset_dir="builtin")
    with caplog.at_level(logging.INFO, logger="peftflow.data"):
        first = prepare_dataset(cfg, tiny_model)
        stats = Path(first.path, "stats.json").stat()
        second = prepare_dataset(cfg, tiny_model)
    assert (first.train_rows, first.eval_rows, first.dropped, first.truncated) == (576, 64, 0, 0)
    assert second == first
    assert Path(first.path) == tmp_path / "cache" / "prepared" / first.fingerprint
    assert (Path(first.path, "stats.json").stat().st_ino, Path(first.path, "stats.json").stat().st_mtime_ns) == (
        stats.st_ino,
        stats.st_mtime_ns,
    )
    messages = [r.getMessage() for r in caplog.records]
    assert [m.split(" at ")[0] for m in messages] == ["prepared data", "reusing prepared data"]
    assert {p.name for p in Path(first.path).iterdir()} == {"train", "eval", "stats.json", "report.json"}
    # `validate` prints the report kept with the data: the same as reading the data again
    assert prepared_report(cfg, tiny_model, second) == data_report(cfg, tiny_model)


def test_labels_are_the_answer_and_end_of_turn_token(demo, tokenizer):
    eos = end_of_turn_token_id(tokenizer, "tokenizer")
    assert tokenizer.convert_ids_to_tokens(eos) == "<|im_end|>"
    for row in load_from_disk(f"{demo.path}/eval"):
        ids, labels = row["input_ids"], row["labels"]
        # Learned: exactly the answer then <|im_end|>; ChatML's "\n" after it is masked prompt.
        assert tokenizer.decode(learned(labels)) == row["reference"] + "<|im_end|>"
        start = labels.index(learned(labels)[0])
        assert labels[:start] == [IGNORE] * start
        assert labels[start:-1] == ids[start:-1]
        assert tokenizer.decode(ids[-1:]) == "\n" and labels[-1] == IGNORE
        # The generation prompt is the masked prefix, ending with the assistant header.
        assert row["prompt_ids"] == ids[:start]
        assert tokenizer.decode(row["prompt_ids"]).endswith("<|im_start|>assistant\n")


def test_demo_stats(demo):
    stats = json.loads(Path(demo.path, "stats.json").read_text())
    assert stats["train_rows"] == 576 and stats["eval_rows"] == 64 and stats["rows_read"] == 640
    assert stats["dropped"] == 0 and stats["dropped_by_reason"] == {}
    assert 0 < stats["token_lengths"]["p50"] <= stats["token_lengths"]["p90"] <= stats["token_lengths"]["max"]
    assert stats["supervised_tokens"] > 640 * 10
    train = load_from_disk(f"{demo.path}/train")
    assert train.column_names == ["input_ids", "labels"]


SHAREGPT = {"qa": {"file_name": "chat.json", "formatting": "sharegpt"}}
TWO_TURNS = [
    {
        "conversations": [
            {"from": "human", "value": "first question"},
            {"from": "gpt", "value": "first answer"},
            {"from": "human", "value": "second question"},
            {"from": "gpt", "value": "second answer"},
        ]
    }
] * 2


@pytest.mark.parametrize(
    "options, expected",
    [
        ({}, "first answer<|im_end|>second answer<|im_end|>"),
        ({"mask_history": True}, "second answer<|im_end|>"),
    ],
)
def test_multi_turn_masking(write_dataset, tiny_model, tokenizer, options, expected):
    root = write_dataset(SHAREGPT, {"chat.json": TWO_TURNS})
    prepared = prepare_dataset(config(root, val_size=0, **options), tiny_model)
    row = load_from_disk(f"{prepared.path}/train")[0]
    assert tokenizer.decode(learned(row["labels"])) == expected


def test_train_on_prompt_learns_every_token(write_dataset, tiny_model):
    root = write_dataset(SHAREGPT, {"chat.json": TWO_TURNS})
    row = load_from_disk(f"{prepare_dataset(config(root, val_size=0, train_on_prompt=True), tiny_model).path}/train")[0]
    assert row["labels"] == row["input_ids"]
    with pytest.raises(UserError, match="train_on_prompt and mask_history"):  # refused with the config itself
        parse_config({"dataset": "chat", "dataset_dir": str(root), "train_on_prompt": True, "mask_history": True})


def test_eval_rows_hold_the_last_turn_as_reference(write_dataset, tiny_model, tokenizer):
    root = write_dataset(SHAREGPT, {"chat.json": TWO_TURNS})
    row = load_from_disk(f"{prepare_dataset(config(root, val_size=1), tiny_model).path}/eval")[0]
    assert row["reference"] == "second answer"
    assert tokenizer.decode(row["prompt_ids"]).endswith("second question<|im_end|>\n<|im_start|>assistant\n")


def test_cutoff_truncates_and_drops_rows_with_nothing_left_to_learn(write_dataset, tiny_model, caplog):
    rows = qa_rows(3) + [
        {"instruction": "long answer", "output": "word " * 200},
        {"instruction": "long question " * 100, "output": "short"},
    ]
    root = write_dataset({"qa": {"file_name": "qa.json"}}, {"qa.json": rows})
    with caplog.at_level(logging.WARNING, logger="peftflow.data"):
        prepared = prepare_dataset(config(root, cutoff_len=64, val_size=0), tiny_model)
    assert (prepared.train_rows, prepared.truncated, prepared.dropped) == (4, 1, 1)
    assert all(len(r["input_ids"]) <= 64 for r in load_from_disk(f"{prepared.path}/train"))
    stats = json.loads(Path(prepared.path, "stats.json").read_text())
    assert stats["dropped_by_reason"] == {"no supervised tokens within cutoff_len": 1}
    assert "no answer token within cutoff_len 64" in caplog.text


def test_every_row_beyond_cutoff_is_an_error(write_dataset, tiny_model):
    root = write_dataset({"qa": {"file_name": "qa.json"}}, {"qa.json": qa_rows(4)})
    with pytest.raises(UserError, match=r"cutoff_len 8: every row's answer starts beyond it"):
        prepare_dataset(config(root, cutoff_len=8), tiny_model)


def test_max_samples_caps_each_dataset(write_dataset, tiny_model):
    info = {"qa": {"file_name": "a.json"}, "more": {"file_name": "b.json"}}
    root = write_dataset(info, {"a.json": qa_rows(10, "a"), "b.json": qa_rows(10, "b")})
    prepared = prepare_dataset(config(root, dataset="qa,more", max_samples=3, val_size=2), tiny_model)
    assert (prepared.train_rows, prepared.eval_rows) == (4, 2)


def _eval_references(root: Path, tiny_model: str, **options) -> list[str]:
    return load_from_disk(f"{prepare_dataset(config(root, **options), tiny_model).path}/eval")["reference"]


def test_val_size_split_is_deterministic_per_seed(write_dataset, tiny_model):
    root = write_dataset({"qa": {"file_name": "qa.json"}}, {"qa.json": qa_rows(40)})
    by_fraction = _eval_references(root, tiny_model, val_size=0.25, seed=1)
    assert len(by_fraction) == 10
    assert _eval_references(root, tiny_model, val_size=0.25, seed=1) == by_fraction
    assert _eval_references(root, tiny_model, val_size=0.25, seed=2) != by_fraction
    assert len(_eval_references(root, tiny_model, val_size=3, seed=1)) == 3
    prepared = prepare_dataset(config(root, val_size=0), tiny_model)
    assert (prepared.train_rows, prepared.eval_rows) == (40, 0)
    assert load_from_disk(f"{prepared.path}/eval").column_names == ["input_ids", "labels", "prompt_ids", "reference"]
    with pytest.raises(UserError, match="val_size 40.0 holds out 40 of 40 rows and leaves none to train on"):
        prepare_dataset(config(root, val_size=40), tiny_model)


def test_drop_mode_drops_and_counts_invalid_rows(write_dataset, tiny_model, caplog):
    rows = qa_rows(8)
    rows[2]["output"] = ""
    rows[5]["instruction"] = 5
    root = write_dataset({"qa": {"file_name": "qa.json"}}, {"qa.json": rows})
    with caplog.at_level(logging.WARNING, logger="peftflow.data"):
        prepared = prepare_dataset(config(root, on_invalid_rows="drop", val_size=0), tiny_model)
    assert (prepared.train_rows, prepared.dropped) == (6, 2)
    assert (
        "dropped 2 invalid rows: row 3: empty response; row 6: field 'instruction' is not a string (got int)"
        in caplog.text
    )


def test_fingerprint_follows_data_template_and_options_only(write_dataset, tiny_model, tmp_path):
    root = write_dataset({"qa": {"file_name": "qa.json"}}, {"qa.json": qa_rows(6)})
    base = prepare_dataset(config(root), tiny_model).fingerprint
    assert prepare_dataset(config(root, learning_rate=1e-3, num_train_epochs=1), tiny_model).fingerprint == base
    assert prepare_dataset(config(root, template="chatml"), tiny_model).fingerprint != base
    assert prepare_dataset(config(root, cutoff_len=512), tiny_model).fingerprint != base
    (root / "qa.json").write_text(json.dumps(qa_rows(6, "x")))
    assert prepare_dataset(config(root), tiny_model).fingerprint != base


def test_data_report_lists_drops_lengths_and_problems(write_dataset, tiny_model):
    rows = qa_rows(6) + [{"instruction": "q", "output": ""}, {"instruction": "q"}]
    root = write_dataset({"qa": {"file_name": "qa.json"}}, {"qa.json": rows})
    report = data_report(config(root, cutoff_len=40), tiny_model)
    assert (report.rows_read, report.rows_kept) == (8, 6)
    assert report.dropped == {"empty response": 1, "field 'output' is missing": 1}
    assert report.dropped_rows["empty response"] == (f"{root}/qa.json row 7",)
    assert set(report.token_lengths) == {"p50", "p90", "p99", "max"}
    assert report.truncated == 0 and report.truncation_rate == 0.0
    assert report.problems == (
        f"{root}/qa.json: 2 invalid rows: row 7: empty response; row 8: field 'output' is missing "
        "(set on_invalid_rows: drop to skip them)",
    )
    text = report.to_text()
    assert (
        "rows: 8 read, 6 kept, 2 dropped" in text
        and "problem:" in text
        and "truncated at cutoff_len 40: 0 rows" in text
    )
