"""What a PEFT method is to peftflow: its traits, how it is built and saved, and its own checks.

Nothing here imports torch or peft: a config is read and checked without them. The builders import
peft when they run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Traits:
    family: str  # module in peftflow/methods that defines it
    mergeable: bool  # can merge_and_unload into the base: ship a plain checkpoint
    supports_kbit: bool  # can train on a 4/8-bit quantised base (quantization_bit)
    gradient_checkpointing: bool  # trains correctly with gradient_checkpointing: true
    distill_student: bool  # may be the student of a distillation run
    vision_language: bool = False  # can train a vision-language model (frozen tower, projector, LM adapters)


def _save_pretrained(model, adapter_dir, init_dir=None) -> None:
    model.save_pretrained(adapter_dir, safe_serialization=True)


@dataclass(frozen=True)
class Method:
    name: str  # the `finetuning_type` value
    traits: Traits
    build: Callable[[Any, Any], Any]  # (base model, cfg) -> the model with only this method's parameters trainable
    # (peft model, output_dir) -> initial-adapter dir or None (PiSSA / OLoRA keep their init for the save)
    before_train: Callable[[Any, Any], str | None] = lambda model, output_dir: None
    save: Callable[..., None] = _save_pretrained  # (model, adapter_dir, init_dir) -> None
    # (cfg) -> None; raises ValueError naming the keys of a combination this method cannot train
    check: Callable[[Any], None] = lambda cfg: None
    # Config keys that only this method reads: set (to a value other than the default) for another
    # method, they are refused instead of silently ignored.
    options: tuple[str, ...] = ()
    # (cfg) -> True when the base's own weights neither train nor are rewritten at init: under
    # bf16 autocast such a base is held in bf16 (training.arguments.base_dtype).
    frozen_base: Callable[[Any], bool] = lambda cfg: True

    @property
    def mergeable(self) -> bool:
        return self.traits.mergeable

    @property
    def gradient_checkpointing(self) -> bool:
        return self.traits.gradient_checkpointing
