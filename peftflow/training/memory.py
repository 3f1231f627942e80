"""Memory of a training run: what it decides from it and what it reports.

- gradient checkpointing is chosen by need: on when the activations a step saves for the
  backward pass would not fit comfortably in the memory left after loading the model.
- the peak (CUDA or process) memory of the run itself, not of whatever the process ran before.

glibc's malloc is left as it is: fixing its mmap threshold at 1 MB handed freed activations back
(peak RSS 2.7 GB instead of 3.7 GB on SmolLM2 LoRA, six batches of 8 x 160..256, bf16) but made
every step fault in fresh pages, 1.6x the step time; checkpointing saves more for less
(docs/performance.md).
"""

from __future__ import annotations

import platform
import resource
from pathlib import Path

import psutil
import torch

# Saved-for-backward values per token per decoder layer, in units of hidden and intermediate size:
# SmolLM2 LoRA at 8 x 256 saved 2.37 GB in fp32 over 30 layers = 6 x 576 + 4 x 1536 per token-layer.
SAVED_PER_HIDDEN, SAVED_PER_INTERMEDIATE = 6, 4
# Checkpoint when the estimated activations exceed this share of the memory free after loading.
ACTIVATION_SHARE = 0.5


def activation_bytes(model_config, tokens: int, bytes_per_value: int) -> int:
    """Estimated bytes a decoder saves for the backward pass over `tokens` tokens (batch x length)."""
    text = getattr(model_config, "text_config", None) or model_config
    hidden = text.hidden_size
    intermediate = getattr(text, "intermediate_size", None) or 4 * hidden
    per_token_layer = SAVED_PER_HIDDEN * hidden + SAVED_PER_INTERMEDIATE * intermediate
    return tokens * text.num_hidden_layers * per_token_layer * bytes_per_value


def available_bytes() -> int:
    """Memory free for this run now: on the current CUDA device, else the host's available memory."""
    if torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0]
    return psutil.virtual_memory().available


def choose_gradient_checkpointing(
    setting: bool | str, supported: bool, model_config, tokens: int, bytes_per_value: int
) -> tuple[bool, str]:
    """(on, why). `setting` is the config value: true, false or "auto" (decide by memory need)."""
    if setting != "auto":
        return bool(setting), "set in the config"
    if not supported:
        return False, "auto: this method does not support it"
    need, free = activation_bytes(model_config, tokens, bytes_per_value), available_bytes()
    on = need > ACTIVATION_SHARE * free
    why = (
        f"auto: activations of the longest batch ~{need / 2**20:,.0f} MB "
        f"{'>' if on else '<='} {ACTIVATION_SHARE:.0%} of {free / 2**20:,.0f} MB free"
    )
    return on, why


def reset_peak() -> None:
    """Start a new peak: CUDA's allocator statistics, and the kernel's high-water mark of this
    process's RSS (/proc/self/clear_refs, Linux), so a long-lived worker reports this run's peak."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_mb() -> float:
    """Peak memory since `reset_peak`: CUDA memory allocated on a GPU, else the process's RSS."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # the process's lifetime peak
    return maxrss / 2**20 if platform.system() == "Darwin" else maxrss / 1024  # bytes there, kB on Linux
