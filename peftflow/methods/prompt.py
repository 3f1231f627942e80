"""Prompt-learning family through peft: prefix tuning, prompt tuning, P-tuning.

They learn virtual tokens (or per-layer key/value prefixes), not weight deltas: nothing can be
merged into the base, so the run ships the adapter and its base (registry.publish_adapter).
"""

from __future__ import annotations

from peft import (PrefixTuningConfig, PromptEncoderConfig, PromptEncoderReparameterizationType, PromptTuningConfig,
                  PromptTuningInit, TaskType, get_peft_model)


def prefix_config(cfg) -> PrefixTuningConfig:
    return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.num_virtual_tokens,
                              prefix_projection=cfg.prefix_projection, encoder_hidden_size=cfg.encoder_hidden_size)


def prompt_config(cfg, tokenizer_path: str | None) -> PromptTuningConfig:
    text = cfg.prompt_tuning_init == "text"
    return PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
        prompt_tuning_init_text=cfg.prompt_tuning_init_text if text else None,
        tokenizer_name_or_path=tokenizer_path if text else None,
    )


def ptuning_config(cfg) -> PromptEncoderConfig:
    return PromptEncoderConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.num_virtual_tokens,
        encoder_reparameterization_type=PromptEncoderReparameterizationType(cfg.encoder_reparameterization_type),
        encoder_hidden_size=cfg.encoder_hidden_size,
    )


def build_prefix(model, cfg):
    return get_peft_model(model, prefix_config(cfg))


def build_prompt(model, cfg):
    return get_peft_model(model, prompt_config(cfg, getattr(model, "name_or_path", None)))


def build_ptuning(model, cfg):
    return get_peft_model(model, ptuning_config(cfg))
