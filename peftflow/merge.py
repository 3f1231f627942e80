"""Merge an adapter into an unquantised copy of the base, and prove the merge changed nothing.

The shipped model is a plain transformers checkpoint (safetensors + tokenizer + chat template):
no peft at inference, no extra latency.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer


PROBE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Extract the order as JSON: Ship four red mugs to Oslo. Regards, Lena Novak.",
)


@dataclass(frozen=True)
class MergeResult:
    merged_dir: str
    max_abs_logit_diff: float
    tolerance: float
    passed: bool


class MergeFidelityError(RuntimeError):
    """The merged model's logits drifted from the adapter model's beyond the tolerance."""


def probe_batch(tokenizer) -> dict[str, torch.Tensor]:
    return tokenizer(list(PROBE_TEXTS), return_tensors="pt", padding=True)


@torch.no_grad()
def _logits(model, batch) -> torch.Tensor:
    return model(**batch).logits.float()


def merge(base_path: str, adapter_dir: str, out_dir: str | Path, tolerance: float,
          trust_remote_code: bool = False) -> MergeResult:
    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir, trust_remote_code=trust_remote_code)
    # fp32 base, never a quantised one: merging into 4-bit weights rounds the update away.
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, trust_remote_code=trust_remote_code)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    batch = probe_batch(tokenizer)
    mask = batch["attention_mask"].bool()
    before = _logits(model, batch)[mask]
    merged = model.merge_and_unload()
    after = _logits(merged, batch)[mask]
    diff = float((before - after).abs().max())

    merged.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    result = MergeResult(str(out_dir), diff, tolerance, diff <= tolerance)
    (out_dir / "merge_fidelity.json").write_text(json.dumps(asdict(result), indent=1))
    if not result.passed:
        raise MergeFidelityError(f"merged model differs from the adapter model by {diff:.2e} > {tolerance:.0e}")
    return result
