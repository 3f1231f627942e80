"""stage: pt, continued pre-training as LLaMA-Factory's pt: plain-text rows, each ending in eos,
concatenated and cut into cutoff_len blocks whose every token is learned; a short run on the tiny
model (also one without a chat template) lowers the loss; bad rows and entries refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from datasets import load_from_disk
from pydantic import ValidationError
from transformers import AutoTokenizer

from peftflow.builtin.order_notes import make_notes
from peftflow.config import RunConfig
from peftflow.data import data_report, prepare_dataset
from peftflow.data.templates import generation_stop_ids
from peftflow.errors import UserError
from peftflow.evaluation.scoring import compare
from peftflow.paths import cache_dir
from peftflow.training.run import run as train

C4 = {"file_name": "c4_demo.jsonl", "columns": {"prompt": "text"}}  # LLaMA-Factory's own pt entry
TEXTS = [f"Note {i}: " + "the order shipped to Porto. " * (i % 4 + 1) for i in range(12)]


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def pt(root: Path, dataset: str = "c4", **options) -> RunConfig:
    return RunConfig(**{"stage": "pt", "dataset": dataset, "dataset_dir": str(root), **options})


def test_texts_prepare_into_blocks_of_cutoff_len_every_token_learned(tiny_model, write_dataset):
    root = write_dataset({"c4": C4}, {"c4_demo.jsonl": jsonl([{"text": t} for t in TEXTS])})
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    eos = tokenizer.eos_token_id
    documents = [ids + [eos] for ids in tokenizer(TEXTS, add_special_tokens=False)["input_ids"]]
    stream = [t for d in documents for t in d]
    blocks, tail = divmod(len(stream), 32)
    assert blocks >= 4 and tail > 0  # the data leaves a tail to drop

    # val_size 0: every block trains, in stream order
    data = prepare_dataset(pt(root, cutoff_len=32, val_size=0), tiny_model)
    train_rows = load_from_disk(f"{data.path}/train")
    assert (data.train_rows, data.eval_rows, data.dropped, data.truncated) == (blocks, 0, 0, 0)
    assert all(len(ids) == 32 for ids in train_rows["input_ids"])
    assert train_rows["labels"] == train_rows["input_ids"]  # every token learned
    assert [t for ids in train_rows["input_ids"] for t in ids] == stream[: blocks * 32]  # eos after each text

    report = data_report(pt(root, cutoff_len=32, val_size=2), tiny_model)
    assert (report.rows_read, report.rows_kept, report.blocks, report.tail_tokens) == (12, 12, blocks, tail)
    assert f"blocks of cutoff_len 32 tokens: {blocks} kept" in report.to_text()
    held_out = load_from_disk(f"{prepare_dataset(pt(root, cutoff_len=32, val_size=2), tiny_model).path}/eval")
    assert len(held_out) == 2
    for row in held_out:  # generation continues the first half and is scored against the second
        assert row["labels"] == row["input_ids"] and row["prompt_ids"] == row["input_ids"][:16]
        assert row["reference"] == tokenizer.decode(row["input_ids"][16:], skip_special_tokens=True)


def test_the_same_rows_read_as_text_are_prepared_apart_from_conversations(tiny_model, write_dataset):
    root = write_dataset(
        {"qa": {"file_name": "qa.json"}}, {"qa.json": [{"instruction": t, "output": "ok"} for t in TEXTS]}
    )
    sft = prepare_dataset(RunConfig(dataset="qa", dataset_dir=str(root), val_size=0), tiny_model)
    text = prepare_dataset(pt(root, "qa", cutoff_len=16, val_size=0), tiny_model)
    assert sft.fingerprint != text.fingerprint and text.train_rows != sft.train_rows


def prepared_dirs() -> set[Path]:
    folder = cache_dir("prepared")
    return {p for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else set()


def test_too_little_text_for_one_block_is_refused_and_nothing_is_written(tiny_model, write_dataset):
    root = write_dataset({"c4": C4}, {"c4_demo.jsonl": jsonl([{"text": "A short note."}])})
    before = prepared_dirs()
    report = data_report(pt(root, cutoff_len=64), tiny_model)
    assert report.blocks == 0 and report.problems[0].startswith("cutoff_len 64: the texts hold ")
    with pytest.raises(UserError, match=r"tokens in all \(1 rows\), less than one block; lower cutoff_len or add text"):
        prepare_dataset(pt(root, cutoff_len=64), tiny_model)
    assert prepared_dirs() == before


def test_bad_rows_are_named_in_one_line(tiny_model, write_dataset):
    rows = [{"text": TEXTS[0]}, {"text": "  "}, {"body": "x"}, {"text": 5}] + [{"text": t} for t in TEXTS]
    root = write_dataset({"c4": C4}, {"c4_demo.jsonl": jsonl(rows)})
    report = data_report(pt(root, cutoff_len=16), tiny_model)
    assert report.dropped == {"empty text": 1, "field 'text' is missing": 1, "field 'text' is not a string": 1}
    assert len(report.problems) == 1 and "\n" not in report.problems[0]
    assert report.problems[0].startswith(
        f"{root}/c4_demo.jsonl: 3 invalid rows: row 2: empty text; row 3: field 'text' is missing; "
        "row 4: field 'text' is not a string (got int)"
    )
    with pytest.raises(UserError, match="3 invalid rows: row 2: empty text"):
        prepare_dataset(pt(root, cutoff_len=16), tiny_model)
    kept = data_report(pt(root, cutoff_len=16, on_invalid_rows="drop"), tiny_model)
    assert (kept.rows_read, kept.rows_kept, kept.problems) == (16, 13, ())


@pytest.mark.parametrize(
    "entry, expected",
    [
        (
            {"file_name": "chat.json", "formatting": "sharegpt"},
            "is sharegpt; stage: pt reads plain text from the prompt column of an alpaca entry "
            '(e.g. "columns": {"prompt": "text"}); LLaMA-Factory\'s pt does not read sharegpt either',
        ),
        (
            {"file_name": "chat.json", "columns": {"prompt": "instruction", "response": "output"}},
            "maps response; stage: pt learns one text column, the prompt: map only it "
            '(e.g. "columns": {"prompt": "text"})',
        ),
        (
            {"file_name": "chat.json", "ranking": True},
            "is preference pairs; stage: pt reads text: a document of plain text",
        ),
    ],
)
def test_an_entry_pt_cannot_read_is_refused_in_one_line(tiny_model, write_dataset, entry, expected):
    root = write_dataset({"chat": entry}, {"chat.json": [{"conversations": []}]})
    with pytest.raises(UserError) as refused:
        prepare_dataset(pt(root, "chat"), tiny_model)
    assert str(refused.value).startswith(f"dataset 'chat' in {root}/dataset_info.json ")
    assert str(refused.value).endswith(expected) and "\n" not in str(refused.value)


@pytest.mark.parametrize("key", ["train_on_prompt", "mask_history"])
def test_prompt_masking_keys_are_refused_with_pt(key):
    with pytest.raises(ValidationError, match=f"{key}: stage: pt learns every token of its text; leave them false"):
        RunConfig(stage="pt", **{key: True})
    assert getattr(RunConfig(**{key: True}), key)  # sft reads them


@pytest.fixture
def plain_lm(tiny_model, tmp_path) -> str:
    """The tiny model as a base model often is for pre-training: a tokenizer without a chat template."""
    plain = Path(shutil.copytree(tiny_model, tmp_path / "plain-lm"))
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    (plain / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "chat_template"}))
    assert not AutoTokenizer.from_pretrained(plain).chat_template
    return str(plain)


def test_pt_trains_a_model_without_a_chat_template_and_the_held_out_loss_falls(plain_lm, write_dataset, tmp_path):
    root = write_dataset({"notes": {**C4, "file_name": "notes.jsonl"}}, {"notes.jsonl": jsonl(make_notes(96))})
    cfg = pt(
        root,
        "notes",
        model_name_or_path=plain_lm,
        cutoff_len=64,
        val_size=4,
        max_steps=12,
        learning_rate=1e-2,
        logging_steps=1,
        save_steps=100,
        per_device_train_batch_size=4,
        bf16_autocast=False,
        evaluation={"metric": "token_f1", "max_samples": 2, "max_new_tokens": 8, "batch_size": 2},
    )
    data = prepare_dataset(cfg, plain_lm)
    result = train(cfg, plain_lm, data.path, tmp_path / "run")
    assert result.supervised_tokens == 12 * 4 * 63  # every token of every block is a target (but the first)
    assert result.loss_history[-1][1] < result.loss_history[0][1]

    tokenizer = AutoTokenizer.from_pretrained(plain_lm)
    assert generation_stop_ids(tokenizer, cfg) == [tokenizer.eos_token_id]  # the template is not read
    report = compare(
        {"base": plain_lm, "tuned": result.adapter_dir}, data.path, cfg, tmp_path / "eval.json", base_model_dir=plain_lm
    )
    assert report.models["tuned"].loss < report.models["base"].loss
    assert len(report.models["tuned"].examples) == 2
