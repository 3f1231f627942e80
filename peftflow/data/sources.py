"""Find datasets through LLaMA-Factory's dataset_info.json and read their rows from local files."""

from __future__ import annotations

import csv
import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from peftflow.atomic import build_once
from peftflow.builtin.catalog import BUILTIN_NAMES, write_builtin_datasets
from peftflow.data.formats import RowFormat
from peftflow.errors import UserError
from peftflow.paths import cache_dir

INFO_FILE = "dataset_info.json"
BUILTIN = "builtin"
READERS = (".json", ".jsonl", ".csv", ".parquet")
# Every key LLaMA-Factory documents for an entry; any other is a typo and gets a suggestion.
ENTRY_KEYS = (
    "file_name",
    "formatting",
    "columns",
    "tags",
    "ranking",
    "split",
    "subset",
    "folder",
    "num_samples",
    "hf_hub_url",
    "ms_hub_url",
    "om_hub_url",
    "script_url",
    "cloud_file_name",
)
HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url")


@dataclass(frozen=True)
class DataFile:
    path: Path  # resolved, inside dataset_dir
    shown: str  # how messages name it: <dataset_dir>/<file_name>


@dataclass(frozen=True)
class DatasetSource:
    name: str
    entry: dict[str, Any]  # the dataset_info.json entry as written
    format: RowFormat
    files: tuple[DataFile, ...]
    root: Path | None = None  # dataset_dir, where relative image paths point; None for cloud files
    info_file: str = INFO_FILE  # the file holding `entry`, as messages name it


def dataset_root(dataset_dir: str) -> Path:
    if dataset_dir == BUILTIN:
        return _builtin_root()
    root = Path(dataset_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"dataset_dir: directory not found: {dataset_dir}")
    return root


def resolve_datasets(dataset_dir: str, names: list[str]) -> list[DatasetSource]:
    root = dataset_root(dataset_dir)
    info_path = root / INFO_FILE
    if not info_path.is_file():
        raise UserError(f"{info_path}: not found; dataset_dir must hold a LLaMA-Factory dataset_info.json")
    info = _load_json(info_path)
    if not isinstance(info, dict):
        raise UserError(f"{info_path}: expected an object of dataset names to entries")
    sources = []
    for name in names:
        if name not in info:
            match = difflib.get_close_matches(name, list(info), n=1)
            hint = f" (did you mean '{match[0]}'?)" if match else f" (has: {', '.join(list(info)[:10])})"
            raise UserError(f"{info_path}: no dataset named '{name}'{hint}")
        entry = info[name]
        if not isinstance(entry, dict):
            raise UserError(f"{info_path}: '{name}' must be an object")
        _check_entry(name, entry, info_path)
        fmt = RowFormat.from_entry(name, entry, str(info_path))
        cloud = bool(entry.get("cloud_file_name"))
        files = (
            _cloud_files(entry["cloud_file_name"]) if cloud else _data_files(root, entry["file_name"], name, info_path)
        )
        sources.append(DatasetSource(name, entry, fmt, files, None if cloud else root, str(info_path)))
    return sources


def read_rows(file: DataFile, required_columns: list[str]) -> Iterator[dict[str, Any]]:
    """Rows of one data file as dicts, read as they are needed: JSON Lines line by line, CSV row by
    row and parquet batch by batch, so a big file is never all in memory (a .json array is parsed
    whole, as json has no other way). Table formats must have every mapped column."""
    suffix = file.path.suffix.lower()
    if suffix == ".parquet":
        rows, columns = _read_parquet(file)
    elif suffix == ".csv":
        rows, columns = _read_csv(file)
    elif suffix == ".jsonl":
        rows, columns = _json_lines(file), None
    else:
        rows, columns = iter(_read_json(file)), None
    if columns is not None:
        missing = [c for c in required_columns if c not in columns]
        if missing:
            raise UserError(f"{file.shown}: missing columns {', '.join(missing)} (has: {', '.join(columns)})")
    empty = True
    for row in rows:
        empty = False
        yield row
    if empty:
        raise UserError(f"{file.shown}: no rows; the dataset is empty")


def _builtin_root() -> Path:
    """peftflow's generated datasets, written once; atomically, since parallel runs may race."""

    def complete(root: Path) -> bool:
        # Written by an older peftflow without every built-in dataset: write again (same bytes for the old ones).
        return (root / INFO_FILE).is_file() and set(BUILTIN_NAMES) <= set(json.loads((root / INFO_FILE).read_text()))

    return build_once(cache_dir("datasets") / BUILTIN, write_builtin_datasets, ready=complete)


def _check_entry(name: str, entry: dict[str, Any], info_path: Path) -> None:
    where = f"{info_path}: '{name}'"
    for key in entry:
        if key not in ENTRY_KEYS:
            match = difflib.get_close_matches(key, ENTRY_KEYS, n=1)
            raise UserError(f"{where} has unknown key '{key}'" + (f" (did you mean '{match[0]}'?)" if match else ""))
    hub = [k for k in HUB_KEYS if entry.get(k)]
    if hub:
        raise UserError(
            f"{where} is a hub dataset ({hub[0]}); hub datasets are not available offline: download it and set "
            "file_name to the local file"
        )
    if entry.get("script_url"):
        raise UserError(f"{where} uses script_url; dataset loading scripts are not supported, use file_name")
    if entry.get("cloud_file_name"):
        if not isinstance(entry["cloud_file_name"], str) or not entry["cloud_file_name"].startswith("s3://"):
            raise UserError(
                f"{where}: cloud_file_name must be an s3://bucket/key URI (got {entry['cloud_file_name']!r})"
            )
    if "num_samples" in entry:
        raise UserError(f"{where}: num_samples is not supported; set max_samples in the run config")
    if not entry.get("cloud_file_name") and (not isinstance(entry.get("file_name"), str) or not entry["file_name"]):
        raise UserError(f"{where} has no file_name")


def _data_files(root: Path, file_name: str, name: str, info_path: Path) -> tuple[DataFile, ...]:
    where = f"{info_path}: '{name}' file_name '{file_name}'"
    if Path(file_name).is_absolute():
        raise UserError(f"{where} is an absolute path; give a path inside dataset_dir {root}")
    path = root / file_name
    _check_inside(path, root, where)
    if path.is_dir():
        paths = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not paths:
            raise UserError(f"{where} is a directory with no data files")
    elif path.is_file():
        paths = [path]
    else:
        raise UserError(f"{path}: data file not found (dataset '{name}' in {info_path})")
    files = []
    for p in paths:
        _check_inside(p, root, where)
        if p.suffix.lower() not in READERS:
            raise UserError(f"{p}: unsupported file type '{p.suffix}' (use {', '.join(READERS)})")
        files.append(DataFile(p.resolve(), str(p)))
    return tuple(files)


def _cloud_files(uri: str) -> tuple[DataFile, ...]:
    """Objects in S3, fetched into the local cache (by ETag); messages name them by URI."""
    from peftflow.data.cloud import fetch

    files = []
    for path, shown in fetch(uri):
        if path.suffix.lower() not in READERS:
            raise UserError(f"{shown}: unsupported file type '{path.suffix}' (use {', '.join(READERS)})")
        files.append(DataFile(path.resolve(), shown))
    return tuple(files)


def _check_inside(path: Path, root: Path, where: str) -> None:
    """A file_name may not reach outside dataset_dir, by `..` or through a symlink."""
    if not path.resolve().is_relative_to(root.resolve()):
        raise UserError(f"{where} points outside dataset_dir {root} (resolves to {path.resolve()})")


def _decode(data: bytes, file: DataFile, line: int = 1, offset: int = 0) -> str:
    """`data` (the whole file, or its line `line` at byte `offset`) as text; a byte order mark dropped."""
    try:
        return data.decode("utf-8-sig" if offset == 0 else "utf-8")
    except UnicodeDecodeError as e:
        line += data[: e.start].count(b"\n")
        raise UserError(
            f"{file.shown}: line {line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {offset + e.start})"
        ) from None


def _load_json(path: Path) -> Any:
    try:
        return json.loads(_decode(path.read_bytes(), DataFile(path, str(path))))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: line {e.lineno}: invalid JSON: {e.msg}") from None


def _read_json(file: DataFile) -> list[dict[str, Any]]:
    text = _decode(file.path.read_bytes(), file)
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        # LLaMA-Factory reads .json through the `json` loader, which also takes JSON Lines.
        if e.msg != "Extra data":
            raise UserError(f"{file.shown}: line {e.lineno}: invalid JSON: {e.msg}") from None
        if "\n" in text[: e.pos].strip():  # a document over several lines, then more: not JSON Lines
            raise UserError(f"{file.shown}: line {e.lineno}: invalid JSON: {e.msg}") from None
        rows = list(_json_lines(file))  # its first line is a whole value: JSON Lines, named by the broken line
    if not isinstance(rows, list):
        raise UserError(f"{file.shown}: expected a JSON list of row objects, got {type(rows).__name__}")
    for number, row in enumerate(rows, start=1):
        _check_object(file, number, row)
    return rows


def _json_lines(file: DataFile) -> Iterator[Any]:
    number, offset = 0, 0
    with open(file.path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            line = _decode(raw, file, line_number, offset)
            offset += len(raw)
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{file.shown}: line {line_number}: invalid JSON: {e.msg}") from None
                number += 1
                _check_object(file, number, row)
                yield row


def _check_object(file: DataFile, number: int, row: Any) -> None:
    if not isinstance(row, dict):
        raise UserError(f"{file.shown}: row {number}: expected a JSON object, got {type(row).__name__}")


def _read_csv(file: DataFile) -> tuple[Iterator[dict[str, Any]], list[str]]:
    handle = open(file.path, encoding="utf-8-sig", newline="")
    reader = csv.DictReader(handle)
    try:
        columns = list(reader.fieldnames or [])
    except UnicodeDecodeError:
        handle.close()
        _decode(file.path.read_bytes(), file)  # raises, naming the line
        raise

    def rows() -> Iterator[dict[str, Any]]:
        with handle:
            try:
                yield from reader
            except csv.Error as e:
                raise UserError(f"{file.shown}: line {reader.line_num}: invalid CSV: {e}") from None
            except UnicodeDecodeError:
                _decode(file.path.read_bytes(), file)  # raises, naming the line
                raise

    return rows(), columns


def _read_parquet(file: DataFile) -> tuple[Iterator[dict[str, Any]], list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file.path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{file.shown}: not a readable parquet file ({type(e).__name__})") from None

    def rows() -> Iterator[dict[str, Any]]:
        for batch in parquet.iter_batches(batch_size=1000):
            yield from batch.to_pylist()

    return rows(), parquet.schema_arrow.names
