"""What each PEFT method can do, without importing torch or peft.

config.py reads this table for its cross-field checks; methods/__init__.py joins it with the
builders. One row per `finetuning_type` value.

`finetuning_type` follows LLaMA-Factory (`lora`, `full`); `prefix`, `prompt`, `ptuning` and `ia3` are
peftflow's own values, extending LLaMA-Factory's vocabulary (which has lora | freeze | full).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Traits:
    family: str                  # module in peftflow/methods that builds it
    mergeable: bool              # can merge_and_unload into the base: ship a plain checkpoint
    supports_kbit: bool          # can train on a 4/8-bit quantised base (quantization_bit)
    gradient_checkpointing: bool  # trains correctly with gradient_checkpointing: true
    multi_gpu: bool              # DDP-safe (all trainable params receive gradients each step)
    distill_student: bool        # may be the student of a distillation run
    vision_language: bool = False  # can train a vision-language model (frozen tower, projector, LM adapters)


TRAITS: dict[str, Traits] = {
    # Every weight trains; the trained checkpoint is the shipped model (nothing to merge).
    "full": Traits("full", mergeable=True, supports_kbit=False, gradient_checkpointing=True,
                   multi_gpu=True, distill_student=True),
    "lora": Traits("lora", mergeable=True, supports_kbit=True, gradient_checkpointing=True,
                   multi_gpu=True, distill_student=True, vision_language=True),
    "ia3": Traits("ia3", mergeable=True, supports_kbit=False, gradient_checkpointing=True,
                  multi_gpu=True, distill_student=False),
    # Prompt family: virtual tokens, not weight deltas, so nothing to fold into the base.
    # Prefix tuning feeds past_key_values, which gradient checkpointing breaks.
    "prefix": Traits("prompt", mergeable=False, supports_kbit=False, gradient_checkpointing=False,
                     multi_gpu=True, distill_student=False),
    "prompt": Traits("prompt", mergeable=False, supports_kbit=False, gradient_checkpointing=True,
                     multi_gpu=True, distill_student=False),
    "ptuning": Traits("prompt", mergeable=False, supports_kbit=False, gradient_checkpointing=True,
                      multi_gpu=True, distill_student=False),
}


def traits_of(name: str) -> Traits:
    return TRAITS[name]


def names_with(trait: str) -> list[str]:
    return [n for n, t in TRAITS.items() if getattr(t, trait)]
