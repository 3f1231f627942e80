"""PEFT methods: one module per family, each declaring its `Method`s (traits, builder, save hook,
checks, own options) in one place; the table is built from the modules listed here.

To add a method: write its module (see ia3.py for the smallest) and add the module's name to
`_MODULES`. The config accepts it as a `finetuning_type` and checks it from its traits.
"""

from __future__ import annotations

from importlib import import_module

from peftflow.methods.base import Method, Traits

_MODULES = ("full", "lora", "ia3", "prompt_learning")

METHODS: dict[str, Method] = {
    m.name: m for module in _MODULES for m in import_module(f"peftflow.methods.{module}").METHODS
}
TRAITS: dict[str, Traits] = {name: m.traits for name, m in METHODS.items()}

__all__ = ["METHODS", "TRAITS", "Method", "Traits", "get_method", "names_with"]


def get_method(cfg) -> Method:
    return METHODS[cfg.finetuning_type]


def names_with(trait: str) -> list[str]:
    return [n for n, t in TRAITS.items() if getattr(t, trait)]
