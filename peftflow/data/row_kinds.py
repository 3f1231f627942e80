"""What a row of a dataset is to the stage that reads it: a row kind sets up how a dataset's rows
are read (formats.py does the reading). A stage names the kind of its `dataset` rows
(`Stage.row_kind`); a stage that reads other data names that data's kind where it reads it
(distillation's teacher prompts are `prompts`).

To add a kind (preference pairs, say): its `RowKind` here, and the format's reading in formats.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from peftflow.data.sources import DatasetSource


@dataclass(frozen=True)
class RowKind:
    name: str
    description: str
    read_as: Callable[[DatasetSource], DatasetSource]  # the source set up to read rows of this kind


def _as_prompts(source: DatasetSource) -> DatasetSource:
    return replace(source, format=replace(source.format, prompts_only=True))


ROW_KINDS: dict[str, RowKind] = {
    k.name: k
    for k in (
        RowKind("conversations", "a conversation ending in the answer to learn", lambda source: source),
        RowKind("prompts", "a conversation without its answer: none needed, a final one dropped", _as_prompts),
    )
}


def read_as(kind: str, sources: list[DatasetSource]) -> list[DatasetSource]:
    return [ROW_KINDS[kind].read_as(s) for s in sources]
