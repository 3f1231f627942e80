"""PEFT methods: one module per family, one table from method name to builder and traits.

Adding a method means one module (or a function in one) and one row in METHODS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from peftflow.methods import lora


@dataclass(frozen=True)
class Method:
    build: Callable          # (model, cfg) -> peft model with only the adapter trainable
    mergeable: bool          # can merge_and_unload into the base
    supports_kbit: bool      # can train on a 4/8-bit quantised base
    gradient_checkpointing: bool


METHODS: dict[str, Method] = {
    "lora": Method(build=lora.build, mergeable=True, supports_kbit=True, gradient_checkpointing=True),
}


def method_name(cfg) -> str:
    """The table key for a config. LLaMA-Factory selects LoRA with finetuning_type: lora."""
    return cfg.finetuning_type


def get_method(cfg) -> Method:
    return METHODS[method_name(cfg)]
