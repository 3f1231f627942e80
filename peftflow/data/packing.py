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

from peftflow.stages import get_stage

IGNORE = -100


def packs_rows(cfg) -> bool:
    """Whether prepare_dataset packs the training rows of this config."""
    return get_stage(cfg).packs_rows and bool(cfg.packing or cfg.neat_packing)


@dataclass(frozen=True)
class Packed:
    input_ids: list[list[int]]
    labels: list[list[int]]
    position_ids: list[list[int]]
    rows: int  # the rows packed
    tokens: int  # their tokens

    def fill(self, cutoff_len: int) -> float:
        """Share of the packed sequences' cutoff_len x N token slots that hold a token."""
        return self.tokens / (cutoff_len * len(self.input_ids)) if self.input_ids else 0.0


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


def pack(input_ids: list[list[int]], labels: list[list[int]], cutoff_len: int) -> Packed:
    """The rows (input ids and labels, each at most cutoff_len tokens) packed into sequences."""
    out = Packed([], [], [], len(input_ids), sum(map(len, input_ids)))
    for b in knapsack([len(ids) for ids in input_ids], cutoff_len):
        seq_ids, seq_labels, seq_positions = [], [], []
        for i in b:
            seq_ids += input_ids[i]
            seq_labels += [IGNORE] + labels[i][1:]  # the first token is never predicted from the row before
            seq_positions += range(len(input_ids[i]))
        out.input_ids.append(seq_ids)
        out.labels.append(seq_labels)
        out.position_ids.append(seq_positions)
    return out
