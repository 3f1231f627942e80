"""PEFT methods: one module per family, one table from method name to builder and traits.

Adding a method means one builder function (in its family's module), one row in
traits.TRAITS (what config.py checks) and one row in METHODS (how it is built).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Callable

# Light on purpose: config.py imports peftflow.methods.traits, which runs this file first, so the
# builders (torch, peft) are imported only when a method is built, not when a config is read.
from peftflow.methods.traits import TRAITS, Traits


@dataclass(frozen=True)
class Method:
    name: str
    traits: Traits
    builder: str                   # "module:function" in peftflow.methods: (model, cfg) -> peft model
    before_train_hook: str = ""    # (peft model, output_dir) -> initial-adapter dir or None (PiSSA / OLoRA)
    save_hook: str = ""            # (peft model, adapter_dir, init_dir) -> None

    @staticmethod
    def _resolve(ref: str) -> Callable:
        module, func = ref.split(":")
        return getattr(import_module(f"peftflow.methods.{module}"), func)

    def build(self, model, cfg):
        """The base model with this method's adapter; only the adapter is trainable."""
        return self._resolve(self.builder)(model, cfg)

    def before_train(self, model, output_dir):
        return self._resolve(self.before_train_hook)(model, output_dir) if self.before_train_hook else None

    def save(self, model, adapter_dir, init_dir=None) -> None:
        if self.save_hook:
            self._resolve(self.save_hook)(model, adapter_dir, init_dir)
        else:
            model.save_pretrained(adapter_dir, safe_serialization=True)

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
    "lora": dict(builder="lora:build", before_train_hook="lora:before_train", save_hook="lora:save"),
    "full": dict(builder="full:build", save_hook="full:save"),
    "ia3": dict(builder="ia3:build"),
    "prefix": dict(builder="prompt:build_prefix"),
    "prompt": dict(builder="prompt:build_prompt"),
    "ptuning": dict(builder="prompt:build_ptuning"),
}

METHODS: dict[str, Method] = {name: Method(name=name, traits=TRAITS[name], **_BUILDERS[name]) for name in TRAITS}


def method_name(cfg) -> str:
    """The table key for a config: its `finetuning_type`."""
    return cfg.finetuning_type


def get_method(cfg) -> Method:
    return METHODS[method_name(cfg)]
