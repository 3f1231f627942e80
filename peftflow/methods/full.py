"""Full fine-tuning: every weight trains and the trained checkpoint is the shipped model."""

from __future__ import annotations

from peftflow.methods.base import Method, Traits


def build(model, cfg):
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def check(cfg) -> None:
    if cfg.merge is False:
        raise ValueError("merge: false with finetuning_type 'full': a full fine-tune ships as trained; drop merge")


# Every weight trains; the trained checkpoint is the shipped model (nothing to merge).
METHODS = [
    Method(
        "full",
        Traits("full", mergeable=True, supports_kbit=False, gradient_checkpointing=True, distill_student=True),
        build=build,
        check=check,
        frozen_base=lambda cfg: False,
    )
]
