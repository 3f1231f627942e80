"""What a row of a dataset is to the stage that reads it: a row kind sets up how a dataset's rows
are read (formats.py does the reading). A stage names the kind of its `dataset` rows
(`Stage.row_kind`); a stage that reads other data names that data's kind where it reads it
(distillation's teacher prompts are `prompts`; continued pre-training reads `text`).

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


def _as_text(source: DatasetSource) -> DatasetSource:
    """An alpaca entry whose `prompt` column holds one document per row, as LLaMA-Factory's pt reads it."""
    fmt, where = source.format, f"dataset '{source.name}' in {source.info_file}"
    if fmt.formatting != "alpaca":
        also = "; LLaMA-Factory's pt does not read sharegpt either" if fmt.formatting == "sharegpt" else ""
        raise UserError(
            f"{where} is {fmt.formatting}; stage: pt reads plain text from the prompt column of an alpaca "
            f'entry (e.g. "columns": {{"prompt": "text"}}){also}'
        )
    others = [f for f in fmt.mapped if f != "prompt"]
    if others:  # refused, not ignored: pt learns one text per row
        raise UserError(
            f"{where} maps {', '.join(others)}; stage: pt learns one text column, the prompt: map only it "
            '(e.g. "columns": {"prompt": "text"})'
        )
    return replace(source, format=replace(fmt, text=True))


ROW_KINDS: dict[str, RowKind] = {
    k.name: k
    for k in (
        RowKind("conversations", "a conversation ending in the answer to learn", lambda source: source),
        RowKind("prompts", "a conversation without its answer: none needed, a final one dropped", _as_prompts),
        RowKind("pairs", "a prompt with a chosen and a rejected answer", lambda source: source, ranking=True),
        RowKind("feedback", "a conversation whose answer is marked desirable or not", _as_feedback, column="kto_tag"),
        RowKind("text", "a document of plain text", _as_text),
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
