"""A reward model scored on held-out preference pairs: its score of each side (both sides in one
forward, as training saw them), the pairwise loss, and per pair whether the chosen side scored
higher, which is the model's `score` (pair accuracy): the gate's paired bootstrap resamples it."""

from __future__ import annotations

import math

import torch

from peftflow.evaluation.pairs import pair_batches, reward_summary
from peftflow.evaluation.report import ModelScores
from peftflow.preference_losses import pairwise_reward_loss

REWARD_METRIC = "pair_accuracy"  # the report's metric for a reward model: its `score`


@torch.no_grad()
def pair_scores(model, rows, pad_id: int, batch_size: int) -> torch.Tensor:
    """[N, 2]: the reward model's score of each pair's chosen side, then its rejected side."""
    out = []
    for batch, n in pair_batches(rows, pad_id, batch_size, model.device):
        scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        scores = scores.squeeze(-1).float().cpu()
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
    preference = reward_summary(chosen, rejected)
    loss = round(float(losses.mean()), 5)
    return ModelScores(label, loss, math.nan, preference["accuracy"], examples, preference=preference)
