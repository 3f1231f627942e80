"""(IA)^3: learned rescaling vectors on attention and feed-forward activations, through peft.

Targets follow peft's per-architecture defaults with `lora_target: all`; a list of module
names targets those, and the feed-forward ones among them (down_proj / fc2 / w2) scale inputs.
"""

from __future__ import annotations

from peftflow.methods.base import Method, Traits

_FEEDFORWARD = ("down_proj", "fc2", "w2", "c_proj", "dense_4h_to_h")


def ia3_config(cfg):
    from peft import IA3Config, TaskType

    if cfg.lora_target == "all":
        targets = feedforward = None  # peft's defaults for the model type
    else:
        targets = cfg.lora_target
        feedforward = (
            [t for t in targets if t.rsplit(".", 1)[-1] in _FEEDFORWARD] if isinstance(targets, list) else None
        )
    extra = cfg.additional_target
    return IA3Config(
        task_type=TaskType.CAUSAL_LM,
        target_modules=targets,
        feedforward_modules=feedforward,
        modules_to_save=[extra] if isinstance(extra, str) else extra,
    )


def build(model, cfg):
    from peft import get_peft_model

    return get_peft_model(model, ia3_config(cfg))


METHODS = [
    Method(
        "ia3",
        Traits("ia3", mergeable=True, supports_kbit=False, gradient_checkpointing=True, distill_student=False),
        build=build,
    )
]
