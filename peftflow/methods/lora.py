"""LoRA and its variants (DoRA, rsLoRA) through peft."""

from __future__ import annotations

from peft import LoraConfig, TaskType, get_peft_model


def _targets(value):
    # LLaMA-Factory's `all` is peft's `all-linear` (every linear layer but the output head).
    return "all-linear" if value == "all" else value


def lora_config(cfg) -> LoraConfig:
    extra = cfg.additional_target
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.lora_rank,
        lora_alpha=cfg.effective_lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=_targets(cfg.lora_target),
        modules_to_save=[extra] if isinstance(extra, str) else extra,
        use_dora=cfg.use_dora,
        use_rslora=cfg.use_rslora,
    )


def build(model, cfg):
    return get_peft_model(model, lora_config(cfg))
