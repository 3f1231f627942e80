"""The teacher's top-k logits for every supervised position of the training rows, computed once
and cached by teacher, data and k, so a distillation run need not keep the teacher in memory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from peftflow.losses import TeacherTopK, decoder_and_head, final_hidden, supervised


@torch.no_grad()
def teacher_topk(teacher, rows: list[dict], k: int, batch_size: int = 8) -> TeacherTopK:
    """Top-k teacher logits for every supervised position of `rows`, in row-major order."""
    _, head = decoder_and_head(teacher)
    values, indices = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        ids, mask, labels = pad_batch(chunk)
        hidden, _ = supervised(final_hidden(teacher, ids, mask), labels)
        top = (hidden @ head.weight.T).float().topk(k, dim=-1)
        values.append(top.values)
        indices.append(top.indices)
    return TeacherTopK(torch.cat(values), torch.cat(indices))


def pad_batch(rows: list[dict], pad_id: int = 0):
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.tensor([r["input_ids"] + [pad_id] * (width - len(r["input_ids"])) for r in rows])
    mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows])
    labels = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in rows])
    return ids, mask, labels


@dataclass
class TeacherCache:
    """Top-k teacher logits for every supervised position of every training row, row-indexed."""

    values: torch.Tensor  # [N, k]
    indices: torch.Tensor  # [N, k] int32
    offsets: torch.Tensor  # [rows + 1]: row r owns positions offsets[r]:offsets[r+1]

    def rows(self, row_ids: list[int]) -> TeacherTopK:
        spans = [(int(self.offsets[r]), int(self.offsets[r + 1])) for r in row_ids]
        return TeacherTopK(
            torch.cat([self.values[a:b] for a, b in spans]), torch.cat([self.indices[a:b] for a, b in spans]).long()
        )

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        tmp = path.with_suffix(".tmp")
        save_file({"values": self.values, "indices": self.indices, "offsets": self.offsets}, str(tmp))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "TeacherCache":
        from safetensors.torch import load_file

        t = load_file(str(path))
        return cls(t["values"], t["indices"], t["offsets"])


def teacher_cache(teacher, train_rows, k: int, path: Path) -> TeacherCache:
    """Load the cache at `path` (keyed by teacher, data and k), or compute and save it."""
    if path.is_file():
        return TeacherCache.load(path)
    k = teacher.config.vocab_size if k < 0 else k
    rows = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in train_rows]
    top = teacher_topk(teacher, rows, k)
    counts = [sum(1 for label in r["labels"][1:] if label != -100) for r in rows]
    offsets = torch.tensor([0] + counts).cumsum(0)
    cache = TeacherCache(top.values, top.indices.int(), offsets)
    path.parent.mkdir(parents=True, exist_ok=True)
    cache.save(path)
    return cache
