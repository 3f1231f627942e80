"""The batch of packed training rows (peftflow/data/packing.py): each row a sequence of whole
examples, its position ids restarting at every example.

Neat packing (each example attends only to itself) leaves out the attention mask and lets the
position ids carry the boundaries, the way transformers reads packed sequences:
- sdpa, eager, flex attention: `create_causal_mask` (transformers/masking_utils.py) finds the
  packed position ids of every row of the batch when no attention mask is given and builds the
  block-diagonal causal mask per row, in the form and dtype each attention function takes (a bool
  mask for sdpa, an additive one in the compute dtype for eager). Rows stay rows: attention costs
  batch x length^2, as unpacked. Only without a key-value cache: the batch says use_cache False,
  since a causal LM's forward otherwise makes a cache even in training, and the mask is then plain
  causal across the examples (measured: tests/unit/test_packing.py). Right padding needs no mask:
  a pad position is 0, its own sequence, and no real token attends to a later one.
- flash attention: transformers' padding-free path reads packed position ids only at batch size 1
  (`_is_packed_sequence`), so the micro-batch is flattened into one row without padding and flash
  attention's variable-length kernel attends within each example.
Plain packing gives the usual padding mask: every token of a row attends to the examples before it
in the same row (LLaMA-Factory's `packing`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100


def is_flash(attn_implementation: str | None) -> bool:
    """flash_attention_2/3 and the hub's flash kernels (kernels-community/flash-attn2, ...)."""
    return "flash" in (attn_implementation or "")


@dataclass
class PackedCollator:
    pad_token_id: int
    neat: bool  # neat packing: no attention across the examples of a row
    flash: bool = False  # the model runs a flash attention implementation
    pad_to_multiple_of: int = 8

    def __call__(self, features: list[dict]) -> dict:
        # No key-value cache: with one, create_causal_mask does not look for packed position ids, and
        # a causal LM's forward makes one unless told not to (use_cache defaults to the config's, true).
        if self.neat and self.flash:
            flat = {
                k: torch.tensor([[x for f in features for x in f[k]]]) for k in ("input_ids", "labels", "position_ids")
            }
            return flat | {"use_cache": False}
        longest = max(len(f["input_ids"]) for f in features)
        width = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of

        def padded(key: str, value: int) -> torch.Tensor:
            return torch.tensor([list(f[key]) + [value] * (width - len(f[key])) for f in features])

        batch = {
            "input_ids": padded("input_ids", self.pad_token_id),
            "labels": padded("labels", IGNORE),
            "position_ids": padded("position_ids", 0),
            "use_cache": False,
        }
        if not self.neat:
            batch["attention_mask"] = torch.tensor(
                [[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features]
            )
        return batch


def packed_collator(tokenizer, model, neat: bool) -> PackedCollator:
    """The collator for `model` (its attention implementation) and this tokenizer's pad token."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return PackedCollator(pad, neat, flash=is_flash(impl))
