"""Prompt-learning family through peft: prefix tuning, prompt tuning, P-tuning.

They learn virtual tokens (or per-layer key/value prefixes), not weight deltas: nothing can be
merged into the base, so the run ships the adapter and its base (mlflow_io.publishing.publish_adapter).
Prefix tuning feeds past_key_values, which gradient checkpointing breaks.

Initialisation decides whether they learn in a short budget. A random key/value prefix disturbs
every layer (first loss 7.1 against the base's 0.69 on the demo task); a prefix initialised from
the base's own keys and values for a real text (`prompt_tuning_init: text`, peft's
`initialize_kv_prefix_from_text`) is the same as that text in front of the prompt, so the first
loss is the base's (0.66). Prompt tuning initialised from a text starts from those tokens' embeddings.
"""

from __future__ import annotations

from peftflow.methods.base import Method, Traits


def prefix_config(cfg):
    from peft import PrefixTuningConfig, TaskType

    return PrefixTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=cfg.num_virtual_tokens,
        prefix_projection=cfg.prefix_projection,
        encoder_hidden_size=cfg.encoder_hidden_size,
    )


def prompt_config(cfg, tokenizer_path: str | None):
    from peft import PromptTuningConfig, PromptTuningInit, TaskType

    text = cfg.prompt_tuning_init == "text"
    return PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=cfg.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
        prompt_tuning_init_text=cfg.prompt_tuning_init_text if text else None,
        tokenizer_name_or_path=tokenizer_path if text else None,
    )


def ptuning_config(cfg):
    from peft import PromptEncoderConfig, PromptEncoderReparameterizationType, TaskType

    return PromptEncoderConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=cfg.num_virtual_tokens,
        encoder_reparameterization_type=PromptEncoderReparameterizationType(cfg.encoder_reparameterization_type),
        encoder_hidden_size=cfg.encoder_hidden_size,
    )


def build_prefix(model, cfg):
    from peft import get_peft_model

    peft_model = get_peft_model(model, prefix_config(cfg))
    if cfg.prompt_tuning_init == "text":
        _prefix_from_text(peft_model, cfg)
    return peft_model


def _prefix_from_text(peft_model, cfg) -> None:
    """The prefix = the base's keys and values for the first `num_virtual_tokens` tokens of the init
    text (repeated until it is long enough), as if the text stood before every prompt."""
    from peft.tuners.cartridge.utils import initialize_kv_prefix_from_text
    from transformers import AutoTokenizer

    text = cfg.prompt_tuning_init_text
    tokenizer = AutoTokenizer.from_pretrained(
        peft_model.get_base_model().name_or_path, trust_remote_code=cfg.trust_remote_code
    )
    repeats = -(-cfg.num_virtual_tokens // max(1, len(tokenizer(text, add_special_tokens=False)["input_ids"])))
    initialize_kv_prefix_from_text(peft_model, tokenizer, text=" ".join([text] * repeats), use_chat_template=False)


def build_prompt(model, cfg):
    from peft import get_peft_model

    return get_peft_model(model, prompt_config(cfg, getattr(model, "name_or_path", None)))


def build_ptuning(model, cfg):
    from peft import get_peft_model

    return get_peft_model(model, ptuning_config(cfg))


def check_prompt(cfg) -> None:
    if cfg.prompt_tuning_init == "text" and not cfg.prompt_tuning_init_text:
        raise ValueError("prompt_tuning_init: text needs prompt_tuning_init_text")


def check_prefix(cfg) -> None:
    check_prompt(cfg)
    if cfg.prompt_tuning_init == "text" and cfg.prefix_projection:
        raise ValueError(
            "prompt_tuning_init: text initialises the prefix itself; it cannot with prefix_projection: true"
        )


def _traits(gradient_checkpointing: bool) -> Traits:
    # Virtual tokens, not weight deltas: nothing to fold into the base.
    return Traits(
        "prompt_learning",
        mergeable=False,
        supports_kbit=False,
        gradient_checkpointing=gradient_checkpointing,
        distill_student=False,
    )


METHODS = [
    Method(
        "prefix",
        _traits(gradient_checkpointing=False),
        build=build_prefix,
        check=check_prefix,
        options=("prompt_tuning_init",),
    ),
    Method(
        "prompt",
        _traits(gradient_checkpointing=True),
        build=build_prompt,
        check=check_prompt,
        options=("prompt_tuning_init",),
    ),
    Method("ptuning", _traits(gradient_checkpointing=True), build=build_ptuning),
]
