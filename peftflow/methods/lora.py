"""LoRA and its variants (DoRA, rsLoRA, PiSSA / OLoRA / gaussian init, QLoRA) through peft."""

from __future__ import annotations

from pathlib import Path

from peftflow.methods.base import Method, Traits

# Inits that rewrite the base weights: the adapter is converted back to plain LoRA at save time,
# so it reloads onto the untouched base (PeftModel.from_pretrained) and merges into it.
_CONVERTED_INITS = {"pissa", "olora"}


def _targets(cfg, model) -> dict:
    """LoraConfig's target keys. LLaMA-Factory's `all` is peft's `all-linear` (every linear layer
    but the output head); a str other than `all` is a regex (peft full-matches it); a list names
    modules. On a mixture-of-experts model, names resolve onto modules, experts and router
    (peftflow.models.moe: `all` leaves the router frozen)."""
    from peftflow.models import moe  # imports torch, which reading a config must not

    value = cfg.lora_target
    if model is None or isinstance(value, str) and value != "all" or not moe.is_moe(model):
        return {"target_modules": "all-linear" if value == "all" else value}
    found = moe.lora_targets(model, value)
    return {
        "target_modules": found.modules or None,
        "target_parameters": found.parameters or None,
        **moe.rank_patterns(found.parameters, cfg.lora_rank, cfg.effective_lora_alpha),
    }


def init_of(cfg) -> str:
    return "pissa" if cfg.pissa_init else cfg.lora_init


def _has_reward_head(model) -> bool:
    # Loaded with the reward head (stage rm: peftflow/models/heads.py), a *ForSequenceClassification.
    return model is not None and type(model).__name__.endswith("ForSequenceClassification")


def lora_config(cfg, model=None):
    """`model`: a vision-language model gets adapters only where peftflow.models.vision.peft_scope
    allows. A reward model's adapter is peft's sequence-classification kind: its head trains in full
    beside the adapters and is saved with them."""
    from peft import LoraConfig, TaskType

    extra = cfg.additional_target
    extra = [extra] if isinstance(extra, str) else list(extra or [])
    scope = {}
    if model is not None and hasattr(model.config, "vision_config"):
        from peftflow.models.vision import peft_scope

        scope = peft_scope(model, cfg)
        extra += scope.pop("modules_to_save")
    init = init_of(cfg)
    return LoraConfig(
        task_type=TaskType.SEQ_CLS if _has_reward_head(model) else TaskType.CAUSAL_LM,
        r=cfg.lora_rank,
        lora_alpha=cfg.effective_lora_alpha,
        lora_dropout=cfg.lora_dropout,
        **_targets(cfg, model),
        modules_to_save=extra or None,
        use_dora=cfg.use_dora,
        use_rslora=cfg.use_rslora,
        init_lora_weights=True if init == "default" else init,
        **scope,
    )


def build(model, cfg):
    from peft import get_peft_model

    if getattr(cfg, "quantization_bit", None):
        _prepare_kbit(model, cfg.gradient_checkpointing)
    return get_peft_model(model, lora_config(cfg, model))


def _prepare_kbit(model, gradient_checkpointing) -> None:
    """peft's prepare_model_for_kbit_training less its cast of every unquantised weight (embeddings,
    output head, norms) to float32: frozen, they stay in the compute dtype, as a LoRA run's frozen
    base does. A 7B's embeddings and head are 1.09B weights, 2.2 GB more in float32 than in bf16.
    `upcast_layernorm` still puts the norms in float32 (models/load.py)."""
    for p in model.parameters():
        p.requires_grad_(False)
    if gradient_checkpointing:
        model.enable_input_require_grads()  # reentrant checkpointing needs an input that requires grad
        model.gradient_checkpointing_enable()


def before_train(model, output_dir) -> str | None:
    """PiSSA / OLoRA: keep the initial adapter, needed to convert the trained one at save."""
    config = model.peft_config["default"]
    if config.init_lora_weights not in _CONVERTED_INITS:
        return None
    init_dir = Path(output_dir) / "adapter_init"
    if not (init_dir / "adapter_config.json").is_file():
        init = config.init_lora_weights
        config.init_lora_weights = True  # saved as plain LoRA, as peft's conversion expects
        model.save_pretrained(init_dir, safe_serialization=True)
        config.init_lora_weights = init
    return str(init_dir)


def save(model, adapter_dir, init_dir=None) -> None:
    if init_dir:
        model.save_pretrained(adapter_dir, safe_serialization=True, path_initial_model_for_weight_conversion=init_dir)
    else:
        model.save_pretrained(adapter_dir, safe_serialization=True)


def check(cfg) -> None:
    if cfg.pissa_init and cfg.lora_init not in ("default", "pissa"):
        raise ValueError(f"pissa_init: true and lora_init: {cfg.lora_init} disagree; keep one")


METHODS = [
    Method(
        "lora",
        Traits(
            "lora",
            mergeable=True,
            supports_kbit=True,
            gradient_checkpointing=True,
            distill_student=True,
            vision_language=True,
        ),
        build=build,
        before_train=before_train,
        save=save,
        check=check,
        options=("use_dora", "use_rslora", "pissa_init", "lora_init"),
        # PiSSA / OLoRA rewrite the base weights as residuals, which bf16 would round.
        frozen_base=lambda cfg: init_of(cfg) not in _CONVERTED_INITS,
    )
]
