"""LLaMA-Factory v1's `train_dataset`: a dataset YAML of `name: {path, source, converter, size,
weight, split}` entries, or one local data file or folder (src/llamafactory/v1/core/data_engine.py).

Only local data is read (`source: local`; v1's default source, the hub, is not reachable
offline). `size` draws that many rows with replacement and `weight` scales a dataset's row count
the same way, as v1's adjust_data_index does, seeded by the run's seed.
"""

from __future__ import annotations

import difflib
import random
from pathlib import Path
from typing import Any

import yaml

from peftflow.data.formats import RowFormat
from peftflow.data.sources import READERS, DataFile, DatasetSource
from peftflow.errors import UserError

ENTRY_KEYS = ("path", "source", "split", "converter", "size", "weight", "streaming")
CONVERTERS = ("alpaca", "sharegpt", "pair")  # pair: preference rows, read by the stages that read pairs


def v1_sources(train_dataset: str) -> list[DatasetSource]:
    p = Path(train_dataset).expanduser()
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise UserError(
                f"train_dataset: {train_dataset}: dataset YAML not found (hub dataset YAMLs are not available offline)"
            )
        try:
            info = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise UserError(f"{p}: invalid YAML: {getattr(e, 'problem', e)}") from None
        if not isinstance(info, dict) or not info or not all(isinstance(v, dict) for v in info.values()):
            raise UserError(f"{p}: expected a mapping of dataset names to {{path, source, converter, ...}}")
        base, where = p.parent, str(p)
    elif p.exists():
        info, base, where = {"default": {"path": train_dataset, "source": "local"}}, Path.cwd(), "train_dataset"
    else:
        raise UserError(
            f"train_dataset: {train_dataset}: not found; hub datasets are not available offline: "
            "download it and point train_dataset at the local file or a dataset YAML"
        )
    return [_source(name, entry, base, where) for name, entry in info.items()]


def _source(name: str, entry: dict[str, Any], base: Path, where: str) -> DatasetSource:
    at = f"{where}: '{name}'"
    for key in entry:
        if key not in ENTRY_KEYS:
            match = difflib.get_close_matches(key, ENTRY_KEYS, n=1)
            raise UserError(f"{at} has unknown key '{key}'" + (f" (did you mean '{match[0]}'?)" if match else ""))
    if entry.get("source", "hf_hub") != "local":
        raise UserError(
            f"{at}: source {entry.get('source', 'hf_hub')}{' (the default)' if 'source' not in entry else ''}: "
            "hub datasets are not available offline; download it and set source: local"
        )
    converter = entry.get("converter")
    if converter is not None and converter not in CONVERTERS:
        raise UserError(
            f"{at}: converter '{converter}' is not supported (use {', '.join(CONVERTERS)}, or none for v1 message rows)"
        )
    if entry.get("split", "train") != "train":
        raise UserError(f"{at}: split '{entry['split']}': local files have one split, train")
    for key, kind in (("size", int), ("weight", (int, float))):
        if key in entry and (not isinstance(entry[key], kind) or isinstance(entry[key], bool) or entry[key] <= 0):
            raise UserError(f"{at}: {key} must be a positive number (got {entry[key]!r})")
    if not isinstance(entry.get("path"), str) or not entry["path"]:
        raise UserError(f"{at} has no path")
    path = Path(entry["path"]).expanduser()
    if not path.is_absolute() and not path.exists():  # v1 reads from the working directory; else beside the YAML
        path = base / path
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith("."))
    elif path.is_file():
        files = [path]
    else:
        raise UserError(f"{path}: data file not found (dataset '{name}' in {where})")
    for f in files:
        if f.suffix.lower() not in READERS:
            raise UserError(f"{f}: unsupported file type '{f.suffix}' (use {', '.join(READERS)})")
    return DatasetSource(
        name,
        entry,
        RowFormat.v1(converter),
        tuple(DataFile(f.resolve(), str(f)) for f in files),
        path.parent if path.is_file() else path,
    )


def resample(rows: list, entry: dict[str, Any], seed: int) -> list:
    """v1's size / weight: rows drawn with replacement (seeded)."""
    rng = random.Random(seed)
    if entry.get("size"):
        rows = rng.choices(rows, k=entry["size"])
    if entry.get("weight"):
        rows = rng.choices(rows, k=int(len(rows) * entry["weight"]))
    return rows
