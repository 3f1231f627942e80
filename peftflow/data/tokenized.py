"""LLaMA-Factory's `tokenized_path`: a folder of the user's that holds a copy of the prepared data.

A run whose tokenized_path holds nothing prepares its data as usual (the fingerprint cache first)
and saves a copy there; a run whose tokenized_path holds data reuses it without tokenising, after
checking it was prepared from this config's inputs: its fingerprint (data bytes, dataset entries,
tokenizer, template and data options: data/fingerprint.py) must be the one this config gives, so a
folder left from other data or other options is refused rather than trained on. Unlike
LLaMA-Factory, which then ignores the data keys, peftflow needs the datasets readable to check it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from peftflow.errors import UserError

log = logging.getLogger("peftflow.data")


def holds_this_data(tokenized_path: str, fingerprint: str, stats_file: str) -> bool:
    """Whether tokenized_path holds the prepared data of `fingerprint`: False when it holds nothing
    yet; refused when it holds anything else."""
    path = Path(tokenized_path).expanduser()
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return False
    stats = path / stats_file
    if not stats.is_file():
        raise UserError(
            f"tokenized_path {tokenized_path}: holds no data peftflow prepared (no {stats_file}); "
            "give an empty or new folder"
        )
    saved = json.loads(stats.read_text()).get("fingerprint")
    if saved != fingerprint:
        raise UserError(
            f"tokenized_path {tokenized_path}: holds data prepared from other inputs or options (fingerprint "
            f"{saved}; this config's is {fingerprint}); remove it or give another folder"
        )
    log.info("reusing the tokenized data at %s (prepared from this config's inputs)", tokenized_path)
    return True


def save_copy(prepared: Path, tokenized_path: str) -> None:
    """Copy the prepared data into tokenized_path, whole or not at all."""
    path = Path(tokenized_path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    try:
        shutil.copytree(prepared, tmp, dirs_exist_ok=True)
        if path.is_dir():
            path.rmdir()  # empty: holds_this_data checked
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("tokenized data saved at %s; runs with tokenized_path: %s reuse it", tokenized_path, tokenized_path)
