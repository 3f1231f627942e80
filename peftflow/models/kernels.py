"""Speed-only choices, used where this machine has them: the attention kernel (`flash_attn`) and
Liger's fused kernels (`enable_liger_kernel`). Neither changes what trains, so a kernel this machine
lacks is a warning, not an error: the run goes on with transformers' default."""

from __future__ import annotations

import torch
from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available, is_liger_kernel_available

# LLaMA-Factory's flash_attn values -> transformers' attn_implementation (None: its default, sdpa)
ATTENTION = {"auto": None, "disabled": "eager", "sdpa": "sdpa", "fa2": "flash_attention_2", "fa3": "flash_attention_3"}
_AVAILABLE = {"fa2": is_flash_attn_2_available, "fa3": is_flash_attn_3_available}


def attention_implementation(cfg) -> str | None:
    """The attn_implementation to load with: the one `flash_attn` names, or the default where this
    machine lacks it."""
    available = _AVAILABLE.get(cfg.flash_attn)
    if available is not None and not (torch.cuda.is_available() and available()):
        return None
    return ATTENTION[cfg.flash_attn]


def use_liger(cfg) -> bool:
    return cfg.enable_liger_kernel and torch.cuda.is_available() and is_liger_kernel_available()


def missing_kernels(cfg) -> list[str]:
    """A warning line for each speed-only key this machine cannot honour."""
    out = []
    if cfg.flash_attn in _AVAILABLE and attention_implementation(cfg) is None:
        out.append(
            f"flash_attn: {cfg.flash_attn} needs FlashAttention on a CUDA GPU, not here: sdpa runs instead "
            "(speed only, the same weights train)"
        )
    if cfg.enable_liger_kernel and not use_liger(cfg):
        out.append(
            "enable_liger_kernel: needs liger-kernel on a CUDA GPU, not here: the stock kernels run "
            "(speed only, the same weights train)"
        )
    return out
