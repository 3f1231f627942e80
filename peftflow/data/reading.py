"""Every source's rows read once, validated and normalised into an on-disk Arrow table of valid rows
(datasets' generator builder writes it as the rows come, so memory does not grow with the row
count). A row is one per line of the table, its conversation (a pair's: the prompt and its chosen
answer) as JSON, with what the stage needs beside it; invalid rows are not in the table but counted
and named per source, in the order they are met.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterator

from peftflow.data.formats import Conversation, InvalidRow
from peftflow.data.images import read_images
from peftflow.data.sources import DatasetSource, read_rows


@dataclass
class SourceRows:
    """One source's reading: how many valid rows it gave, its invalid rows, and the first invalid
    row's hint about a row shape other than the entry's ("" if none)."""

    valid: int = 0
    invalid: list[tuple[str, str, str]] = field(default_factory=list)  # (file, reason, "row N: message")
    hint: str = ""


@dataclass
class ReadRows:
    table: object  # datasets.Dataset of the valid rows, source after source
    sources: list[SourceRows]
    rows_read: int
    drops: list[tuple[str, str]]  # (reason, "<file> row N") of each invalid row
    has_images: bool
    has_pairs: bool

    def ranges(self) -> list[range]:
        """Each source's rows in `table`."""
        out, start = [], 0
        for s in self.sources:
            out.append(range(start, start + s.valid))
            start += s.valid
        return out


def raw_features():
    from datasets import Features, List, Value

    text = Value("string")
    return Features(
        {
            "conversation": text,  # JSON: a conversation's messages differ in keys from row to row
            "rejected": text,  # JSON: a preference pair's rejected answer turn, "" when none
            "kto_tag": Value("bool"),  # KTO feedback: whether the answer is desirable (null when not feedback)
            "text": text,  # plain text (stage pt): the document; its conversation is "[]"
            "images": List(Value("binary")),
            "where": text,  # "<file> row N"
        }
    )


def read_valid_rows(sources: list[DatasetSource], scratch: Path) -> ReadRows:
    """Read every source into an Arrow table under `scratch` (which the caller removes)."""
    read = ReadRows(None, [], 0, [], False, False)
    read.table = write_table(_rows(sources, read), raw_features(), scratch / "rows.arrow")
    return read


def write_table(rows: Iterator[dict], features, path: Path, batch_rows: int = 1000):
    """A datasets.Dataset of `rows`, written to the Arrow file `path` a batch at a time as they come."""
    import pyarrow as pa
    from datasets import Dataset

    schema = features.arrow_schema
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        while batch := list(islice(rows, batch_rows)):
            writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=schema))
    return Dataset.from_file(str(path))


def empty_table(features):
    from datasets import Dataset

    return Dataset.from_dict({name: [] for name in features}, features=features)


def conversations(table, rows: range | list[int] | None = None) -> Iterator[Conversation]:
    """The conversations of `table` (of `rows` only, when given), decoded."""
    selected = table if rows is None else table.select(rows)
    for batch in selected.select_columns(["conversation"]).iter(batch_size=1000):
        yield from (json.loads(c) for c in batch["conversation"])


def _rows(sources: list[DatasetSource], read: ReadRows) -> Iterator[dict]:
    for source in sources:
        rows = SourceRows()
        read.sources.append(rows)
        for file in source.files:
            yield from file_rows(source, file, rows, read)


def file_rows(source: DatasetSource, file, rows: SourceRows, read: ReadRows) -> Iterator[dict]:
    """One file of `source`: its valid rows (raw_features()), the invalid ones counted in `rows` and `read`."""
    for number, row in enumerate(read_rows(file, source.format.required_columns), start=1):
        read.rows_read += 1
        where = f"{file.shown} row {number}"
        try:
            out = _valid(source, row, where)
        except InvalidRow as e:
            rows.invalid.append((file.shown, e.reason, f"row {number}: {e}"))
            read.drops.append((e.reason, where))
            rows.hint = rows.hint or e.hint
            continue
        rows.valid += 1
        read.has_images = read.has_images or bool(out["images"])
        read.has_pairs = read.has_pairs or bool(out["rejected"])
        yield out


def _valid(source: DatasetSource, row: dict, where: str) -> dict:
    fmt = source.format
    out = {"conversation": "[]", "rejected": "", "kto_tag": None, "text": "", "images": [], "where": where}
    if fmt.text:
        return out | {"text": fmt.to_text(row)}
    if fmt.ranking:
        conversation, rejected = fmt.to_pair(row)
        out["rejected"] = json.dumps(rejected)
    elif fmt.feedback:
        conversation, out["kto_tag"] = fmt.to_feedback(row)
    else:
        conversation = fmt.to_conversation(row)
    out["images"] = read_images(source, fmt.images(row, conversation))
    return out | {"conversation": json.dumps(conversation)}
