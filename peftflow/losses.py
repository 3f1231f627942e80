"""The training losses, torch only: cross-entropy and logit distillation over supervised positions.

Both work on the hidden states that predict a label (`supervised`), never on full-vocabulary
logits for every position.

Cross-entropy (`supervised_ce`):

The stock path (`model(**batch, labels=...)`) materialises fp32 logits for every position,
prompt and padding included: batch x length x vocab, the largest tensor of a small-model step
(49,152 x 256 x 8 x 4 bytes = 400 MB for SmolLM2, several times over in the backward pass).
Here the decoder runs once, the hidden states that predict a label are gathered, and the output
head plus cross-entropy run over them chunk by chunk; each chunk's logits are recomputed in the
backward pass (activation checkpointing), so memory holds one chunk's logits at a time. The
value equals the stock loss: shifted labels, ignore -100, mean over label tokens, or the sum
divided by `num_items_in_batch` when the Trainer passes it (gradient accumulation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

CHUNK_POSITIONS = 512  # supervised positions per logits chunk: 512 x 49,152 fp32 = 100 MB


def supervised(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states that predict a label (shifted by one) and those labels: [N, H], [N]."""
    targets = labels[:, 1:]
    mask = targets != -100
    return hidden[:, :-1][mask], targets[mask]


def decoder_and_head(model):
    """The transformer body (LoRA layers included) and the output embedding of a (peft) causal LM."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def final_hidden(model, input_ids, attention_mask) -> torch.Tensor:
    decoder, _ = decoder_and_head(model)
    return decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def supports_chunked_loss(model) -> bool:
    """True when logits are the output head applied to the decoder's last hidden state. Not for
    prompt-learning adapters (their virtual tokens live in PeftModel.forward), vision-language
    models, models that rescale logits after the head (Gemma's soft-capping, Cohere's logit_scale),
    or an MoE whose loss adds the router's (moe_aux_loss_coef)."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and peft_config.is_prompt_learning:
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    if getattr(config, "vision_config", None) is not None:
        return False  # the decoder alone would never see the image features
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) not in (None, 1, 1.0):
        return False
    if getattr(config, "output_router_logits", False):
        return False  # the model's own forward adds the router's load-balancing loss (moe_aux_loss_coef)
    try:
        decoder, head = decoder_and_head(model)
    except (AttributeError, NotImplementedError):
        return False
    return decoder is not None and head is not None


def _chunk_ce(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def supervised_ce(
    model, batch: dict[str, torch.Tensor], num_items_in_batch=None, chunk_positions: int = CHUNK_POSITIONS
) -> torch.Tensor:
    """The stock causal-LM loss of `batch` (input_ids, attention_mask, labels[, position_ids])."""
    decoder, head = decoder_and_head(model)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if batch.get(k) is not None}
    hidden = decoder(**inputs, use_cache=False).last_hidden_state
    hidden, targets = supervised(hidden, batch["labels"])
    total = hidden.sum() * 0  # keeps the graph when no position is supervised
    for start in range(0, targets.numel(), chunk_positions):
        end = start + chunk_positions
        total = total + checkpoint(_chunk_ce, hidden[start:end], head, targets[start:end], use_reentrant=False)
    if num_items_in_batch is None:
        return total / max(targets.numel(), 1)
    return total / torch.as_tensor(num_items_in_batch, device=total.device)


# --- logit distillation ------------------------------------------------------------------------
# loss = kd_ratio * T^2 * KL(teacher || student, at temperature T) + (1 - kd_ratio) * CE, over the
# supervised positions in chunks; each chunk's logits are recomputed in the backward pass.


@dataclass(frozen=True)
class KDSettings:
    temperature: float = 2.0
    kd_ratio: float = 0.5
    direction: str = "forward"  # forward: KL(teacher || student); reverse: KL(student || teacher)
    chunk_size: int = 256  # supervised positions per chunk


@dataclass
class TeacherTopK:
    """Cached teacher logits for N supervised positions: the k largest values and their token ids.
    Exact for k = vocab; for k < vocab the teacher distribution is renormalised over its top k."""

    values: torch.Tensor  # [N, k] float
    indices: torch.Tensor  # [N, k] long


def _chunk_losses(s_hidden, s_weight, teacher_part, targets, settings: KDSettings, full_vocab: bool):
    """Summed (KL, CE) over one chunk of positions. `teacher_part` is teacher logits [c, V] when
    `full_vocab`, else a (values, indices) top-k pair."""
    t = settings.temperature
    s_logits = (s_hidden @ s_weight.T).float()
    ce = F.cross_entropy(s_logits, targets, reduction="sum")
    s_logp = F.log_softmax(s_logits / t, dim=-1)
    if full_vocab:
        t_logp = F.log_softmax(teacher_part.float() / t, dim=-1)
        if settings.direction == "forward":
            kl = F.kl_div(s_logp, t_logp, log_target=True, reduction="sum")
        else:
            kl = F.kl_div(t_logp, s_logp, log_target=True, reduction="sum")
    else:
        values, indices = teacher_part
        t_logp = F.log_softmax(values.float() / t, dim=-1)  # renormalised over the top k
        kl = (t_logp.exp() * (t_logp - s_logp.gather(-1, indices))).sum()
    return kl, ce


def kd_loss(
    s_hidden: torch.Tensor,
    s_weight: torch.Tensor,
    targets: torch.Tensor,
    settings: KDSettings,
    teacher_logits_fn=None,
    teacher_topk: TeacherTopK | None = None,
    num_items_in_batch=None,
) -> dict[str, torch.Tensor]:
    """Distillation loss over N supervised positions, computed in chunks.

    s_hidden: student final hidden states [N, H]; s_weight: student output embedding [V, H].
    The teacher is either `teacher_logits_fn(start, end) -> [c, V]` (computed on the fly) or a
    top-k cache aligned with the positions. The loss is the mean over the N positions, or, like
    the stock loss under gradient accumulation, the sum divided by `num_items_in_batch` (the
    supervised positions of every micro-batch of the optimizer step). `kl` and `ce` are per-position
    means of this batch either way (what the logs show).
    """
    n = s_hidden.shape[0]
    if n == 0:
        zero = s_hidden.sum() * 0
        return {"loss": zero, "kl": zero.detach(), "ce": zero.detach()}
    full_vocab = teacher_topk is None
    if not full_vocab and settings.direction != "forward":
        raise ValueError("reverse KL needs the full teacher distribution; use a live teacher or k = vocab")
    kl_sum = ce_sum = 0.0
    for start in range(0, n, settings.chunk_size):
        end = min(start + settings.chunk_size, n)
        if full_vocab:
            with torch.no_grad():
                part = teacher_logits_fn(start, end)
        else:
            part = (teacher_topk.values[start:end], teacher_topk.indices[start:end])
        kl, ce = checkpoint(
            _chunk_losses,
            s_hidden[start:end],
            s_weight,
            part,
            targets[start:end],
            settings,
            full_vocab,
            use_reentrant=False,
        )
        kl_sum, ce_sum = kl_sum + kl, ce_sum + ce
    total = settings.kd_ratio * settings.temperature**2 * kl_sum + (1 - settings.kd_ratio) * ce_sum
    divisor = n if num_items_in_batch is None else torch.as_tensor(num_items_in_batch, device=total.device)
    return {"loss": total / divisor, "kl": (kl_sum / n).detach(), "ce": (ce_sum / n).detach()}
