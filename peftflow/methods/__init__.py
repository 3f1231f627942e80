"""PEFT methods: one module per family, one table from method name to builder and traits.

Adding a method means one builder function (in its family's module), one row in
traits.TRAITS (what config.py checks) and one row in METHODS (how it is built).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from peftflow.methods import ia3, lora, prompt
from peftflow.methods.traits import TRAITS, Traits


def _plain_save(model, adapter_dir, init_dir=None):
    model.save_pretrained(adapter_dir, safe_serialization=True)


@dataclass(frozen=True)
class Method:
    name: str
    build: Callable          # (model, cfg) -> peft model with only the adapter trainable
    traits: Traits
    # (peft model, output_dir) -> dir of the adapter as initialised, or None (PiSSA / OLoRA)
    before_train: Callable = lambda model, out: None
    # (peft model, adapter_dir, init_dir) -> None; converts PiSSA / OLoRA to plain LoRA
    save: Callable = _plain_save

    @property
    def mergeable(self) -> bool:
        return self.traits.mergeable

    @property
    def supports_kbit(self) -> bool:
        return self.traits.supports_kbit

    @property
    def gradient_checkpointing(self) -> bool:
        return self.traits.gradient_checkpointing


_BUILDERS = {
    "lora": dict(build=lora.build, before_train=lora.before_train, save=lora.save),
    "ia3": dict(build=ia3.build),
    "prefix": dict(build=prompt.build_prefix),
    "prompt": dict(build=prompt.build_prompt),
    "ptuning": dict(build=prompt.build_ptuning),
}

METHODS: dict[str, Method] = {name: Method(name=name, traits=TRAITS[name], **_BUILDERS[name]) for name in TRAITS}


def method_name(cfg) -> str:
    """The table key for a config: its `finetuning_type`."""
    return cfg.finetuning_type


def get_method(cfg) -> Method:
    return METHODS[method_name(cfg)]
