"""tokenized_path: prepared data saved into the user's folder, reused from it without tokenising,
and refused when the folder holds data prepared from other inputs or options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import load_from_disk

from peftflow.config import RunConfig
from peftflow.data import prepare_dataset
from peftflow.errors import UserError


def _cfg(tokenized: Path, **keys) -> RunConfig:
    return RunConfig(
        dataset="demo_orders", dataset_dir="builtin", max_samples=60, tokenized_path=str(tokenized), **keys
    )


def test_saved_then_reused_without_tokenising(tiny_model, tmp_path, monkeypatch, caplog):
    tokenized = tmp_path / "tokenized"
    first = prepare_dataset(_cfg(tokenized), tiny_model)
    assert {p.name for p in tokenized.iterdir()} == {"train", "eval", "stats.json", "report.json"}
    assert json.loads((tokenized / "stats.json").read_text())["fingerprint"] == first.fingerprint
    # Another machine's empty cache: the rows come from tokenized_path, nothing is prepared again.
    monkeypatch.setenv("PEFTFLOW_HOME", str(tmp_path / "fresh-home"))
    with caplog.at_level("INFO", logger="peftflow.data"):
        second = prepare_dataset(_cfg(tokenized), tiny_model)
    assert Path(second.path) == tokenized and second.fingerprint == first.fingerprint
    assert not list((tmp_path / "fresh-home" / "cache" / "prepared").glob("*"))
    assert any("reusing the tokenized data" in r.getMessage() for r in caplog.records)
    assert load_from_disk(str(tokenized / "train"))["input_ids"] == load_from_disk(f"{first.path}/train")["input_ids"]


def test_data_prepared_from_other_options_is_refused(tiny_model, tmp_path):
    tokenized = tmp_path / "tokenized"
    prepare_dataset(_cfg(tokenized), tiny_model)
    with pytest.raises(UserError, match=rf"tokenized_path {tokenized}: holds data prepared from other inputs"):
        prepare_dataset(_cfg(tokenized, cutoff_len=64), tiny_model)


def test_a_folder_of_other_files_is_refused(tiny_model, tmp_path):
    tokenized = tmp_path / "tokenized"
    tokenized.mkdir()
    (tokenized / "dataset_dict.json").write_text("{}")  # e.g. LLaMA-Factory's own save_to_disk
    with pytest.raises(UserError, match="holds no data peftflow prepared"):
        prepare_dataset(_cfg(tokenized), tiny_model)
    assert [p.name for p in tokenized.iterdir()] == ["dataset_dict.json"]
