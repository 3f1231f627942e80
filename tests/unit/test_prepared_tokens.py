"""Prepared data is token for token what it was: every shipped dataset, row format (alpaca, sharegpt,
tools, v1, images, pairs, feedback, plain text) and masking rule, prepared and digested column by
column, against digests recorded before data preparation moved onto `datasets.map` (commit c5e1937's
row-by-row path). A changed digest names the case and the split.

The digests are regenerated only when a change to the tokens is intended:
  PYTHONPATH=. .venv/bin/python -m tests.unit.test_prepared_tokens --write
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from peftflow.config import RunConfig
from peftflow.paths import peftflow_home

DIGESTS = Path(__file__).parents[1] / "fixtures" / "prepared_digests.json"
LF_DATA = Path(__file__).parents[1] / "fixtures" / "llamafactory" / "data"
V1_DATASET = Path(__file__).parents[1] / "fixtures" / "llamafactory" / "v1" / "v1_dataset.yaml"
BAD_ROWS = [{"instruction": f"question {i}", "output": f"answer {i} " + "word " * (i % 7 * 9)} for i in range(40)] + [
    {"instruction": "no answer"},
    {"output": "no question"},
    {"instruction": 3, "output": "x"},
]

# name -> (model: tiny | llava, RunConfig keys)
CASES: dict[str, tuple[str, dict]] = {
    "orders-tokenizer-template": ("tiny", {"dataset": "demo_orders"}),
    "orders-qwen": ("tiny", {"dataset": "demo_orders", "template": "qwen"}),
    "orders-default-cut-48": ("tiny", {"dataset": "demo_orders", "template": "default", "cutoff_len": 48}),
    "orders-train-on-prompt": ("tiny", {"dataset": "demo_orders", "template": "qwen", "train_on_prompt": True}),
    "orders-max-samples-count-val": ("tiny", {"dataset": "demo_orders,demo_general", "max_samples": 50, "val_size": 7}),
    "mix-under-probs": (
        "tiny",
        {"dataset": "demo_orders,demo_general", "mix_strategy": "interleave_under", "interleave_probs": "0.7,0.3"},
    ),
    "mix-over": (
        "tiny",
        {"dataset": "demo_general,demo_orders", "mix_strategy": "interleave_over", "max_samples": 100},
    ),
    "tools-qwen": ("tiny", {"dataset": "demo_tools", "template": "qwen"}),
    "tools-cut-drops": ("tiny", {"dataset": "demo_tools", "cutoff_len": 300, "mask_history": True}),
    "tools-tokenizer-mask-history": ("tiny", {"dataset": "demo_tools", "mask_history": True}),
    "packing": ("tiny", {"dataset": "demo_orders", "template": "qwen", "packing": True, "cutoff_len": 256}),
    "neat-packing": ("tiny", {"dataset": "demo_tools", "neat_packing": True, "cutoff_len": 512}),
    "pairs-dpo": ("tiny", {"dataset": "demo_order_pairs", "stage": "dpo", "template": "qwen"}),
    "feedback-kto": ("tiny", {"dataset": "demo_order_feedback", "stage": "kto"}),
    "notes-pt": ("tiny", {"dataset": "demo_order_notes", "stage": "pt", "cutoff_len": 64}),
    "lf-dpo-en-demo": (
        "tiny",
        {"dataset": "dpo_en_demo", "dataset_dir": str(LF_DATA), "stage": "dpo", "cutoff_len": 256},
    ),
    "lf-kto-en-demo": (
        "tiny",
        {"dataset": "kto_en_demo", "dataset_dir": str(LF_DATA), "stage": "kto", "cutoff_len": 256},
    ),
    "lf-c4-demo-pt": ("tiny", {"dataset": "c4_demo", "dataset_dir": str(LF_DATA), "stage": "pt", "cutoff_len": 128}),
    "v1-dataset": ("tiny", {"train_dataset": str(V1_DATASET), "template": "chatml", "val_size": 2}),
    "invalid-rows-dropped": ("tiny", {"dataset": "bad", "on_invalid_rows": "drop", "cutoff_len": 40}),
    "images-llava": ("llava", {"dataset": "demo_shapes", "val_size": 4}),
}


def _digest(values) -> str:
    return hashlib.sha256(json.dumps(values, default=_bytes_digest).encode()).hexdigest()


def _bytes_digest(value) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return hashlib.sha256(value).hexdigest()
    raise TypeError(f"cannot digest a {type(value).__name__}")


def prepared_digest(name: str, models: dict[str, str], bad_dir: Path, **speed) -> dict:
    """Each split's columns digested, with the stats and the report (minus the cache fingerprint);
    `speed`: keys that change how fast it is prepared, and nothing else."""
    from datasets import load_from_disk

    from peftflow.data import prepare_dataset

    model, keys = CASES[name]
    keys = {"dataset_dir": str(bad_dir) if keys.get("dataset") == "bad" else "builtin", **keys, **speed}
    prepared = prepare_dataset(RunConfig(**keys), models[model])
    out = {}
    for split in ("train", "eval"):
        data = load_from_disk(str(Path(prepared.path, split)))
        columns = data[:]
        out[split] = {column: _digest(columns[column]) for column in sorted(columns)}
        out[split]["features"] = _digest(str(data.features))
    stats = json.loads(Path(prepared.path, "stats.json").read_text())
    stats.pop("fingerprint")
    out["stats"] = stats
    # the report names rows by file: the temporary dirs the files are in are not part of it
    report = json.loads(Path(prepared.path, "report.json").read_text())
    if report.pop("streamed", None) is not False:  # a field added since: its default is what was there before
        raise AssertionError(f"{name}: the report says the data was streamed")
    text = json.dumps(report, indent=1)
    out["report"] = _digest(text.replace(str(bad_dir), "<bad>").replace(str(peftflow_home()), "<home>"))
    return out


def write_bad_rows(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "bad.json").write_text(json.dumps(BAD_ROWS))
    (root / "dataset_info.json").write_text(json.dumps({"bad": {"file_name": "bad.json"}}))
    return root


@pytest.fixture(scope="module")
def models(tiny_model) -> dict[str, str]:
    from peftflow.models.resolve import resolve_model

    return {"tiny": tiny_model, "llava": resolve_model("builtin:tiny-llava").path}


@pytest.mark.parametrize("name", sorted(CASES))
def test_prepared_tokens_match_the_recorded_digests(name, models, tmp_path):
    recorded = json.loads(DIGESTS.read_text())[name]
    assert prepared_digest(name, models, write_bad_rows(tmp_path / "bad")) == recorded


def test_several_processes_and_small_batches_tokenise_the_same_tokens(models, tmp_path):
    """preprocessing_num_workers / preprocessing_batch_size change the speed only."""
    recorded = json.loads(DIGESTS.read_text())["tools-cut-drops"]
    speed = {"preprocessing_num_workers": 2, "preprocessing_batch_size": 64}
    assert prepared_digest("tools-cut-drops", models, tmp_path, **speed) == recorded


def _write_digests() -> None:
    import tempfile

    from peftflow.models.resolve import resolve_model

    models = {"tiny": resolve_model("builtin:tiny-random").path, "llava": resolve_model("builtin:tiny-llava").path}
    with tempfile.TemporaryDirectory() as tmp:
        bad = write_bad_rows(Path(tmp) / "bad")
        digests = {name: prepared_digest(name, models, bad) for name in sorted(CASES)}
    DIGESTS.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(digests)} digests to {DIGESTS}")


if __name__ == "__main__" and "--write" in sys.argv:
    _write_digests()
