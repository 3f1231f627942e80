"""What `peftflow validate` shows about the data: rows read, kept and dropped (and why), token
lengths, truncation (plain text: the blocks it was cut into), and every problem that would stop
training. Made by data/prepare.py and kept beside the prepared data (`report.json`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from peftflow.errors import UserError


@dataclass(frozen=True)
class DataReport:
    """Rows, drops, token lengths and problems of the data a config reads."""

    datasets: tuple[str, ...]
    rows_read: int
    rows_kept: int
    dropped: dict[str, int]  # reason -> rows
    dropped_rows: dict[str, tuple[str, ...]]  # reason -> the first few, as "<file> row N"
    token_lengths: dict[str, int]  # p50 / p90 / p99 / max tokens per row, before cutoff
    cutoff_len: int
    truncated: int
    problems: tuple[str, ...]  # what would stop prepare_dataset
    # Plain text (stage pt): the cutoff_len blocks the kept rows were concatenated and cut into, and
    # the tokens after the last whole block, dropped; None for rows trained one by one.
    blocks: int | None = None
    tail_tokens: int = 0
    # packing: (training rows, the sequences of at most cutoff_len tokens they were packed into, the
    # share of those sequences' token slots filled); None when rows train one by one
    packed: tuple[int, int, float] | None = None
    # interleaved datasets (mix_strategy): {"strategy": ..., "rows": {dataset: rows drawn}}, before
    # cutoff drops; None for concat
    mixed: dict | None = None
    # streaming: the figures are the held-out rows' (the training rows are read as the run trains)
    streamed: bool = False

    @classmethod
    def from_json(cls, path: Path) -> DataReport:
        raw = json.loads(Path(path).read_text())
        return cls(
            **raw
            | {
                "datasets": tuple(raw["datasets"]),
                "problems": tuple(raw["problems"]),
                "dropped_rows": {k: tuple(v) for k, v in raw["dropped_rows"].items()},
                "packed": tuple(raw["packed"]) if raw.get("packed") else None,
            }
        )

    @property
    def truncation_rate(self) -> float:
        return self.truncated / self.rows_kept if self.rows_kept else 0.0

    def to_text(self) -> str:
        lengths = " ".join(f"{k}={v}" for k, v in self.token_lengths.items())
        lines = [
            f"datasets: {', '.join(self.datasets)}",
            *(
                ["streaming: the training rows are read as the run trains; these figures are the held-out rows'"]
                if self.streamed
                else []
            ),
            f"rows: {self.rows_read} read, {self.rows_kept} kept, {sum(self.dropped.values())} dropped",
            *(
                f"  dropped {n}: {reason} ({', '.join(self.dropped_rows[reason])})"
                for reason, n in self.dropped.items()
            ),
            f"tokens per row: {lengths}",
            self._cut_line(),
            *(
                [
                    f"packed: {self.packed[0]} training rows -> {self.packed[1]} sequences of up to {self.cutoff_len} "
                    f"tokens ({self.packed[2]:.1%} filled)"
                ]
                if self.packed
                else []
            ),
            *([self._mixed_line()] if self.mixed else []),
            *(f"problem: {p}" for p in self.problems),
        ]
        return "\n".join(lines)

    def _mixed_line(self) -> str:
        rows = self.mixed["rows"]
        total = sum(rows.values()) or 1
        shares = ", ".join(f"{name} {n} ({n / total:.1%})" for name, n in rows.items())
        return f"mixed by {self.mixed['strategy']}: {shares} rows drawn"

    def _cut_line(self) -> str:
        if self.blocks is None:
            return f"truncated at cutoff_len {self.cutoff_len}: {self.truncated} rows ({self.truncation_rate:.1%})"
        return (
            f"blocks of cutoff_len {self.cutoff_len} tokens: {self.blocks} kept (the rows concatenated, each ending "
            f"in eos; the last {self.tail_tokens} tokens, less than a block, dropped)"
        )


class DataProblems(UserError):
    """Data that cannot train: the first problem is the message, `report` lists them all."""

    def __init__(self, report: DataReport):
        super().__init__(report.problems[0])
        self.report = report


def percentiles(lengths: list[int]) -> dict[str, int]:
    ordered = sorted(lengths) or [0]
    at = {p: ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)] for p in (50, 90, 99)}
    return {"p50": at[50], "p90": at[90], "p99": at[99], "max": ordered[-1]}
