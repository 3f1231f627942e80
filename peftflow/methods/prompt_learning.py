"""Prompt-learning family through peft: prefix tuning, prompt tuning, P-tuning.

They learn virtual tokens (or per-layer key/value prefixes), not weight deltas: nothing can be
merged into the base, so the run ships the adapter and its base (mlflow_io.publishing.publish_adapter).
Prefix tuning feeds past_key_values, which gradient checkpointing breaks.
"""

from __future__ import annotations

from peftflow.methods.base import Method, Traits


def prefix_config(cfg):
    from peft import PrefixTuningConfig, TaskType

    return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.num_virtual_tokens,
                              prefix_projection=cfg.prefix_projection, encoder_hidden_size=cfg.encoder_hidden_size)


def prompt_config(cfg, tokenizer_path: str | None):
    from peft import PromptTuningConfig, PromptTuningInit, TaskType

    text = cfg.prompt_tuning_init == "text"
    return PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
        prompt_tuning_init_text=cfg.prompt_tuning_init_text if text else None,
        tokenizer_name_or_path=tokenizer_path if text else None,
    )


def ptuning_config(cfg):
    from peft import PromptEncoderConfig, PromptEncoderReparameterizationType, TaskType

    return PromptEncoderConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.num_virtual_tokens,
        encoder_reparameterization_type=PromptEncoderReparameterizationType(cfg.encoder_reparameterization_type),
        encoder_hidden_size=cfg.encoder_hidden_size,
    )


def build_prefix(model, cfg):
    from peft import get_peft_model

    return get_peft_model(model, prefix_config(cfg))


def build_prompt(model, cfg):
    from peft import get_peft_model

    return get_peft_model(model, prompt_config(cfg, getattr(model, "name_or_path", None)))


def build_ptuning(model, cfg):
    from peft import get_peft_model

    return get_peft_model(model, ptuning_config(cfg))


def check_prompt(cfg) -> None:
    if cfg.prompt_tuning_init == "text" and not cfg.prompt_tuning_init_text:
        raise ValueError("prompt_tuning_init: text needs prompt_tuning_init_text")


def _traits(gradient_checkpointing: bool) -> Traits:
    # Virtual tokens, not weight deltas: nothing to fold into the base.
    return Traits("prompt_learning", mergeable=False, supports_kbit=False,
                  gradient_checkpointing=gradient_checkpointing, distill_student=False)


METHODS = [
    Method("prefix", _traits(gradient_checkpointing=False), build=build_prefix),
    Method("prompt", _traits(gradient_checkpointing=True), build=build_prompt, check=check_prompt,
           options=("prompt_tuning_init",)),
    Method("ptuning", _traits(gradient_checkpointing=True), build=build_ptuning),
]
