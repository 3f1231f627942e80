"""What a row of a dataset is to the stage that reads it: a row kind sets up how a dataset's rows
are read (formats.py does the reading). A stage names the kind of its `dataset` rows
(`Stage.row_kind`); a stage that reads other data names that data's kind where it reads it
(distillation's teacher prompts are `prompts`).

To add a kind: its `RowKind` here, and the format's reading in formats.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from peftflow.data.sources import DatasetSource
from peftflow.errors import UserError


@dataclass(frozen=True)
class RowKind:
    name: str
    description: str
    read_as: Callable[[DatasetSource], DatasetSource]  # the source set up to read rows of this kind
    ranking: bool = False  # read from dataset_info.json entries with `"ranking": true`, and only from those
    column: str | None = None  # a field its dataset_info.json entries must map (`columns`)


def _as_prompts(source: DatasetSource) -> DatasetSource:
    return replace(source, format=replace(source.format, prompts_only=True))


def _as_feedback(source: DatasetSource) -> DatasetSource:
    return replace(source, format=replace(source.format, feedback=True))


ROW_KINDS: dict[str, RowKind] = {
    k.name: k
    for k in (
        RowKind("conversations", "a conversation ending in the answer to learn", lambda source: source),
        RowKind("prompts", "a conversation without its answer: none needed, a final one dropped", _as_prompts),
        RowKind("pairs", "a prompt with a chosen and a rejected answer", lambda source: source, ranking=True),
        RowKind("feedback", "a conversation whose answer is marked desirable or not", _as_feedback, column="kto_tag"),
    )
}


def read_as(kind: str, sources: list[DatasetSource], reader: str) -> list[DatasetSource]:
    """`sources` set up to be read as rows of `kind` by `reader` (e.g. `stage: dpo`), as LLaMA-Factory
    does: a ranking dataset is read by the stages that read pairs, and only by them."""
    row_kind = ROW_KINDS[kind]
    for s in sources:
        if s.format.ranking != row_kind.ranking:
            what = "preference pairs" if s.format.ranking else 'not preference pairs (no "ranking": true)'
            raise UserError(
                f"dataset '{s.name}' in {s.info_file} is {what}; {reader} reads {kind}: {row_kind.description}"
            )
        if row_kind.column and not s.format.columns.get(row_kind.column):
            raise UserError(
                f"dataset '{s.name}' in {s.info_file} maps no {row_kind.column} column; {reader} reads {kind}: "
                f'{row_kind.description} (add "columns": {{"{row_kind.column}": "<its column>"}})'
            )
    return [row_kind.read_as(s) for s in sources]
