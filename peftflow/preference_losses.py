"""Preference losses, torch only: sequence log-probabilities and the losses of stages dpo, kto and rm.

The keys mean what LLaMA-Factory 0.9.5 documents for them (`pref_loss`, `pref_beta`, `pref_ftx`,
`dpo_label_smoothing`, `simpo_gamma`), so a config trains the loss its key names:

- sigmoid, hinge: sums of label-token log-probs; ipo, orpo, simpo: per-token averages (sum / count),
  for the reference model too (ipo).
- orpo and simpo need no reference model; their rewards are beta times the policy's average log-prob.
- pref_ftx adds ftx times the chosen side's per-token negative log-likelihood to every loss.

`sequence_logps` gives the per-row sums and counts without full-vocabulary logits for every position,
the way `losses.supervised_ce` does: decoder once, head + log_softmax over supervised positions in
checkpointed chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from peftflow.losses import CHUNK_POSITIONS, decoder_and_head, supervised, supports_chunked_loss

PREFERENCE_LOSSES = ("sigmoid", "hinge", "ipo", "orpo", "simpo")
_AVERAGED = frozenset({"ipo", "orpo", "simpo"})
_REFERENCE_FREE = frozenset({"orpo", "simpo"})


# --- sequence log-probabilities -----------------------------------------------------------------


def _chunk_logps(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor) -> torch.Tensor:
    logps = F.log_softmax(head(hidden).float(), dim=-1)
    return logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _chunked_logps(model, batch, chunk_positions: int) -> torch.Tensor:
    decoder, head = decoder_and_head(model)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if batch.get(k) is not None}
    hidden = decoder(**inputs, use_cache=False).last_hidden_state
    labels = batch["labels"]
    # the row of each supervised position, in the order `supervised` gathers them (row-major)
    rows = (labels[:, 1:] != -100).nonzero(as_tuple=True)[0]
    hidden, targets = supervised(hidden, labels)
    sums = hidden.new_zeros(labels.shape[0], dtype=torch.float32) + hidden.sum().float() * 0  # graph when N = 0
    for start in range(0, targets.numel(), chunk_positions):
        end = start + chunk_positions
        part = checkpoint(_chunk_logps, hidden[start:end], head, targets[start:end], use_reentrant=False)
        sums = sums.index_add(0, rows[start:end], part)
    return sums


def _full_logits_logps(model, batch) -> torch.Tensor:
    """Fallback for models whose logits are not head(decoder): the model's own forward, fp32 logits."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}  # image features etc. of vision-language models
    logits = model(**inputs).logits.float()
    labels = batch["labels"]
    # prompt tuning prepends virtual tokens to the logits; the last positions are the input's
    logits = logits[:, -labels.shape[1] :]
    targets = labels[:, 1:]
    mask = targets != -100
    logps = F.log_softmax(logits[:, :-1], dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logps * mask).sum(-1)


def sequence_logps(
    model, batch: dict[str, torch.Tensor], chunk_positions: int = CHUNK_POSITIONS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row sum of the label tokens' log-probabilities (labels shifted by one, -100 not learned)
    and per-row count of label tokens, both [B]. Differentiable."""
    counts = (batch["labels"][:, 1:] != -100).sum(-1)
    if supports_chunked_loss(model):
        return _chunked_logps(model, batch, chunk_positions), counts
    return _full_logits_logps(model, batch), counts


# --- stage dpo: sigmoid, hinge, ipo, orpo, simpo ---------------------------------------------------


@dataclass(frozen=True)
class PreferenceSettings:
    loss: str = "sigmoid"  # pref_loss
    beta: float = 0.1  # pref_beta
    label_smoothing: float = 0.0  # dpo_label_smoothing (cDPO), sigmoid only
    simpo_gamma: float = 0.5  # simpo's target reward margin
    ftx: float = 0.0  # pref_ftx: weight of the chosen side's NLL added to the loss

    def __post_init__(self):
        if self.loss not in PREFERENCE_LOSSES:
            raise ValueError(f"unknown preference loss {self.loss!r}; one of {', '.join(PREFERENCE_LOSSES)}")
        if self.beta <= 0:
            raise ValueError(f"beta must be positive (ipo and simpo divide by it), got {self.beta}")
        if not 0 <= self.label_smoothing <= 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5], got {self.label_smoothing}")
        if self.ftx < 0:
            raise ValueError(f"ftx must be >= 0, got {self.ftx}")


def uses_reference(loss: str) -> bool:
    """False for orpo and simpo: they compare the policy's chosen and rejected sides only."""
    return loss not in _REFERENCE_FREE


def length_normalised(loss: str) -> bool:
    """True when the loss uses per-token average log-probs instead of sums (ipo, orpo, simpo)."""
    return loss in _AVERAGED


@dataclass
class PreferenceTerms:
    """Per-row tensors [B]. `losses` carries the graph; the rest are detached, for logs."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    sft_loss: torch.Tensor | None = None  # orpo only
    odds_ratio_loss: torch.Tensor | None = None  # orpo only


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0. An average log-prob is below 0, but rounds to 0 when the model is
    sure of every token; the clamp keeps log(0) = -inf (and NaN gradients) out of orpo's loss."""
    x = x.clamp(max=-1e-6)
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _orpo(settings: PreferenceSettings, pc: torch.Tensor, pr: torch.Tensor) -> PreferenceTerms:
    log_odds = (pc - pr) - (_log1mexp(pc) - _log1mexp(pr))
    sft_loss = -pc
    odds_ratio_loss = -F.logsigmoid(log_odds)
    losses = sft_loss + settings.beta * odds_ratio_loss
    rewards = settings.beta * pc.detach(), settings.beta * pr.detach()
    return PreferenceTerms(losses, *rewards, sft_loss=sft_loss.detach(), odds_ratio_loss=odds_ratio_loss.detach())


def _simpo(settings: PreferenceSettings, pc: torch.Tensor, pr: torch.Tensor) -> PreferenceTerms:
    logits = (pc - pr) - settings.simpo_gamma / settings.beta
    losses = -F.logsigmoid(settings.beta * logits)
    return PreferenceTerms(losses, settings.beta * pc.detach(), settings.beta * pr.detach())


def _with_reference(settings, pc, pr, rc, rr) -> PreferenceTerms:
    beta, ls = settings.beta, settings.label_smoothing
    logits = (pc - rc) - (pr - rr)
    if settings.loss == "sigmoid":
        losses = -F.logsigmoid(beta * logits) * (1 - ls) - F.logsigmoid(-beta * logits) * ls
    elif settings.loss == "hinge":
        losses = torch.relu(1 - beta * logits)
    else:  # ipo
        losses = (logits - 1 / (2 * beta)) ** 2
    return PreferenceTerms(losses, beta * (pc - rc).detach(), beta * (pr - rr).detach())


def preference_loss(
    settings: PreferenceSettings,
    chosen_logps: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_logps: torch.Tensor,
    rejected_tokens: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
) -> PreferenceTerms:
    """Per-row preference losses from per-row log-prob sums and label-token counts ([B] each); the
    reference sums come from the same rows, so they share the counts."""
    loss = settings.loss
    scale = (lambda s, n: s / n) if length_normalised(loss) else (lambda s, n: s)
    pc, pr = scale(chosen_logps, chosen_tokens), scale(rejected_logps, rejected_tokens)
    if loss == "orpo":
        terms = _orpo(settings, pc, pr)
    elif loss == "simpo":
        terms = _simpo(settings, pc, pr)
    else:
        if ref_chosen_logps is None or ref_rejected_logps is None:
            raise ValueError(f"pref_loss {loss!r} needs the reference model's log-probs (ref_chosen/rejected_logps)")
        rc, rr = scale(ref_chosen_logps, chosen_tokens), scale(ref_rejected_logps, rejected_tokens)
        terms = _with_reference(settings, pc, pr, rc, rr)
    if settings.ftx > 0:
        terms.losses = terms.losses + settings.ftx * -(chosen_logps / chosen_tokens)
    return terms


# --- stage kto, stage rm ---------------------------------------------------------------------------


def kto_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    kl,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TRL's KTO loss. Log-ratios are policy minus reference per-row log-probs of the desirable
    (chosen) and undesirable (rejected) rows; either side may be empty. `kl` is the batch's estimate
    of KL(policy || reference): a baseline, so detached and clamped at 0.
    Returns (per-row losses, chosen first; chosen rewards; rejected rewards)."""
    kl = torch.as_tensor(kl, dtype=chosen_logratios.dtype, device=chosen_logratios.device).detach().clamp(min=0)
    chosen_losses = desirable_weight * (1 - torch.sigmoid(beta * (chosen_logratios - kl)))
    rejected_losses = undesirable_weight * (1 - torch.sigmoid(beta * (kl - rejected_logratios)))
    losses = torch.cat((chosen_losses, rejected_losses), 0)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def pairwise_reward_loss(
    chosen_scores: torch.Tensor, rejected_scores: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bradley-Terry loss of a reward model per pair, -log sigmoid(chosen - rejected), and whether
    the pair is ranked right (1.0) or not (0.0)."""
    return -F.logsigmoid(chosen_scores - rejected_scores), (chosen_scores > rejected_scores).float()
