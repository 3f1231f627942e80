"""Packing (LLaMA-Factory's `packing` / `neat_packing`, for a stage whose `Stage.packs_rows`: sft):
the training split's rows, each already cut to cutoff_len, binned whole into sequences of at most
cutoff_len tokens by a greedy knapsack (best fit, longest rows first). In a packed sequence each
row's position ids restart at 0, and its first token's label is -100, so no row's first token is
predicted from the row before it. Whether the rows of a sequence attend to each other is the
collator's business (peftflow/training/collator.py): plain packing lets them, neat packing does not.
The held-out split is never packed: evaluation scores rows one by one."""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass
from typing import Iterator

from peftflow.stages import get_stage

IGNORE = -100


def packs_rows(cfg) -> bool:
    """Whether prepare_dataset packs the training rows of this config."""
    return get_stage(cfg).packs_rows and bool(cfg.packing or cfg.neat_packing)


@dataclass(frozen=True)
class Packed:
    """What packing made, for the report."""

    rows: int  # the rows packed
    sequences: int
    tokens: int  # their tokens

    def fill(self, cutoff_len: int) -> float:
        """Share of the packed sequences' cutoff_len x N token slots that hold a token."""
        return self.tokens / (cutoff_len * self.sequences) if self.sequences else 0.0


def knapsack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` in bins whose lengths sum to at most `capacity`: each length, longest
    first, goes into the bin with the least room that still holds it (a new bin when none does).
    Each bin lists its indices in ascending order."""
    bins: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (tokens left, bin), sorted
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"a row of {n} tokens does not fit in {capacity}")
        at = bisect_left(room, (n, -1))
        if at == len(room):
            bins.append([i])
            insort(room, (capacity - n, len(bins) - 1))
        else:
            left, b = room.pop(at)
            bins[b].append(i)
            insort(room, (left - n, b))
    return [sorted(b) for b in bins]


def pack_bin(rows: list[tuple[list[int], list[int]]]) -> dict[str, list[int]]:
    """One packed sequence of whole rows, each (input ids, labels), in the order given."""
    seq_ids, seq_labels, seq_positions = [], [], []
    for ids, labels in rows:
        seq_ids += ids
        seq_labels += [IGNORE] + labels[1:]  # the first token is never predicted from the row before
        seq_positions += range(len(ids))
    return {"input_ids": seq_ids, "labels": seq_labels, "position_ids": seq_positions}


def packed_rows(table, bins: list[list[int]]) -> Iterator[dict[str, list[int]]]:
    """Each bin of `table`'s rows (its input_ids and labels) packed, read from the table in bin
    order, a batch at a time."""
    ordered = table.select([i for b in bins for i in b]).select_columns(["input_ids", "labels"])
    sizes, current = iter(len(b) for b in bins), []
    want = next(sizes, 0)
    for batch in ordered.iter(batch_size=1000):
        for row in zip(batch["input_ids"], batch["labels"]):
            current.append(row)
            if len(current) == want:
                yield pack_bin(current)
                current, want = [], next(sizes, 0)
