"""A reward model scored on held-out preference pairs: its score of each side (both sides in one
forward, as training saw them), the pairwise loss, and per pair whether the chosen side scored
higher, which is the model's `score` (pair accuracy): the gate's paired bootstrap resamples it."""

from __future__ import annotations

import math

import torch

from peftflow.evaluation.pairs import pair_batch
from peftflow.evaluation.report import ModelScores
from peftflow.preference_losses import pairwise_reward_loss

REWARD_METRIC = "pair_accuracy"  # the report's metric for a reward model: its `score`


@torch.no_grad()
def pair_scores(model, rows, pad_id: int, batch_size: int) -> torch.Tensor:
    """[N, 2]: the reward model's score of each pair's chosen side, then its rejected side."""
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = {k: v.to(model.device) for k, v in pair_batch(chunk, pad_id).items() if k != "labels"}
        scores = model(**batch).logits.squeeze(-1).float().cpu()
        n = len(chunk["input_ids"])
        out.append(torch.stack([scores[:n], scores[n:]], dim=1))
    return torch.cat(out) if out else torch.zeros(0, 2)


def reward_model_scores(label: str, scores: torch.Tensor) -> ModelScores:
    """ModelScores of a reward model from its pair_scores: loss = the mean pairwise loss, score = pair
    accuracy, the preference scores as dpo reports them (accuracy, margin, mean rewards)."""
    if not len(scores):
        return ModelScores(label, math.nan, math.nan, math.nan)
    chosen, rejected = scores[:, 0], scores[:, 1]
    losses, ranked = pairwise_reward_loss(chosen, rejected)
    examples = [
        {"index": i, "prediction": f"chosen {c:+.4f}, rejected {r:+.4f}", "reference": "chosen", "score": float(k)}
        for i, (c, r, k) in enumerate(zip(chosen.tolist(), rejected.tolist(), ranked.tolist()))
    ]
    accuracy = round(float(ranked.mean()), 4)
    preference = {
        "accuracy": accuracy,
        "margin": round(float((chosen - rejected).mean()), 5),
        "chosen_reward": round(float(chosen.mean()), 5),
        "rejected_reward": round(float(rejected.mean()), 5),
    }
    loss = round(float(losses.mean()), 5)
    return ModelScores(label, loss, math.nan, accuracy, examples, preference=preference)
