"""Causal-LM cross-entropy over supervised positions only, in chunks.

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

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from peftflow.methods.distill import decoder_and_head, supervised

CHUNK_POSITIONS = 512  # supervised positions per logits chunk: 512 x 49,152 fp32 = 100 MB


def supports_chunked_loss(model) -> bool:
    """True when logits are the output head applied to the decoder's last hidden state. Not for
    prompt-learning adapters (their virtual tokens live in PeftModel.forward), vision-language
    models, or models that rescale logits after the head (Gemma's soft-capping, Cohere's logit_scale)."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and peft_config.is_prompt_learning:
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    if getattr(config, "vision_config", None) is not None:
        return False  # the decoder alone would never see the image features
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) not in (None, 1, 1.0):
        return False
    try:
        decoder, head = decoder_and_head(model)
    except (AttributeError, NotImplementedError):
        return False
    return decoder is not None and head is not None


def _chunk_ce(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def supervised_ce(model, batch: dict[str, torch.Tensor], num_items_in_batch=None,
                  chunk_positions: int = CHUNK_POSITIONS) -> torch.Tensor:
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
