"""Load a resolved model for training: its dtype, its attention kernel, float32 norms where asked,
and a 4/8-bit bitsandbytes base for QLoRA."""

from __future__ import annotations

import torch

from peftflow.models import heads, kernels, moe, vision
from peftflow.stages import get_stage


def compute_dtype(cfg) -> torch.dtype:
    """The dtype weights are loaded in (and, for a k-bit base, compute in)."""
    if cfg.compute_dtype:
        return getattr(torch, cfg.compute_dtype)
    return torch.bfloat16 if cfg.bf16 else torch.float16 if cfg.fp16 else torch.float32


def load_base(model_path: str, cfg, dtype: torch.dtype | None = None):
    """The base model as `cfg` trains it: in `dtype` (default `compute_dtype`), quantised when
    `quantization_bit` is set, with the reward head for a stage that trains one."""
    dtype = dtype or compute_dtype(cfg)
    model = _load(model_path, cfg, dtype, kernels.attention_implementation(cfg))
    if cfg.upcast_layernorm:
        upcast_norms(model)
    return model


def upcast_norms(model) -> None:
    """LLaMA-Factory's upcast_layernorm: every normalisation layer's weights in float32 (a half-precision
    norm loses the small differences it scales by)."""
    for module in model.modules():
        if "Norm" in type(module).__name__:
            for p in module.parameters(recurse=False):
                if p.is_floating_point() and p.dtype != torch.float32:
                    p.data = p.data.float()


def _load(model_path: str, cfg, dtype: torch.dtype, attention: str | None):
    reward = get_stage(cfg).reward_head
    extra = {"attn_implementation": attention} if attention else {}
    if cfg.moe_aux_loss_coef:  # preflight made sure the model has a router loss
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
        extra |= moe.aux_loss_overrides(config, cfg.moe_aux_loss_coef)
    # A vision-language model is never quantised: the config x model checks refuse quantization_bit.
    if not cfg.quantization_bit or vision.is_vision_language(model_path):
        return heads.load(model_path, reward, dtype=dtype, trust_remote_code=cfg.trust_remote_code, **extra)
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=cfg.quantization_bit == 4,
        load_in_8bit=cfg.quantization_bit == 8,
        bnb_4bit_quant_type=cfg.quantization_type,
        bnb_4bit_use_double_quant=cfg.double_quantization,
        bnb_4bit_compute_dtype=dtype,
    )
    device_map = None if torch.cuda.is_available() else {"": "cpu"}
    return heads.load(
        model_path,
        reward,
        dtype=dtype,
        quantization_config=quant,
        device_map=device_map,
        trust_remote_code=cfg.trust_remote_code,
        **extra,
    )
