"""Preference pairs scored: each side's summed log-probability under a model, and from those the
implicit rewards that say whether a model prefers the chosen answer to the rejected one.

A batch of pairs is one forward over 2B rows, the B chosen sides first, so both sides of a pair see
the same padding and the same kernels."""

from __future__ import annotations

import torch

from peftflow.preference_losses import PreferenceSettings, length_normalised, sequence_logps, uses_reference

PAIR_COLUMNS = ("rejected_input_ids", "rejected_labels")  # what a prepared split of pairs adds


def pair_batch(rows: dict[str, list], pad_id: int, second=PAIR_COLUMNS, multiple: int = 8) -> dict[str, torch.Tensor]:
    """Rows of pairs (columns input_ids, labels and the `second` side's ids and labels: a pair's
    rejected side, or a KTO row's KL row) as one padded batch of 2B sequences: first sides, then
    second sides."""
    ids = rows["input_ids"] + rows[second[0]]
    labels = rows["labels"] + rows[second[1]]
    width = -(-max(map(len, ids)) // multiple) * multiple
    return {
        "input_ids": torch.tensor([r + [pad_id] * (width - len(r)) for r in ids]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids]),
        "labels": torch.tensor([r + [-100] * (width - len(r)) for r in labels]),
    }


def pair_batches(rows, pad_id: int, batch_size: int, device, second=PAIR_COLUMNS):
    """(batch of 2B sequences on `device`, B) for each `batch_size` rows of pairs (pair_batch)."""
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        yield {k: v.to(device) for k, v in pair_batch(chunk, pad_id, second).items()}, len(chunk["input_ids"])


@torch.no_grad()
def pair_logps(model, rows, pad_id: int, batch_size: int, second=PAIR_COLUMNS) -> torch.Tensor:
    """[N, 4]: each pair's first side's log-prob sum and token count, then its second side's."""
    out = []
    for batch, n in pair_batches(rows, pad_id, batch_size, model.device, second):
        sums, counts = sequence_logps(model, batch)
        out.append(torch.stack([sums[:n], counts[:n], sums[n:], counts[n:]], dim=1).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 4)


def rewards(settings: PreferenceSettings, policy: torch.Tensor, reference: torch.Tensor | None):
    """(chosen, rejected) implicit rewards per pair from pair_logps rows: beta * log(policy / reference),
    on per-token averages for the length-normalised losses; the policy's alone for ORPO and SimPO."""
    logps = policy[:, [0, 2]]
    if length_normalised(settings.loss):
        logps = logps / policy[:, [1, 3]].clamp(min=1)
    if uses_reference(settings.loss):
        ref = reference[:, [0, 2]]
        logps = logps - (ref / reference[:, [1, 3]].clamp(min=1) if length_normalised(settings.loss) else ref)
    scaled = settings.beta * logps
    return scaled[:, 0], scaled[:, 1]


def preference_scores(settings: PreferenceSettings, policy: torch.Tensor, reference: torch.Tensor | None) -> dict:
    """Held-out preference accuracy (the chosen side rewarded above the rejected) and mean margin."""
    if not len(policy):
        return {}
    return reward_summary(*rewards(settings, policy, reference))


def reward_summary(chosen: torch.Tensor, rejected: torch.Tensor) -> dict:
    """Accuracy (the chosen side rewarded above the rejected), mean margin and mean rewards of pairs."""
    return {
        "accuracy": round(float((chosen > rejected).float().mean()), 4),
        "margin": round(float((chosen - rejected).mean()), 5),
        "chosen_reward": round(float(chosen.mean()), 5),
        "rejected_reward": round(float(rejected.mean()), 5),
    }
