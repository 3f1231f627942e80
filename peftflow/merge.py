"""Merge an adapter into an unquantised copy of the base, and prove the merge changed nothing.

The shipped model is a plain transformers checkpoint (safetensors + tokenizer + chat template):
no peft at inference, no extra latency.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoProcessor, AutoTokenizer

from peftflow import vision


PROBE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Extract the order as JSON: Ship four red mugs to Oslo. Regards, Lena Novak.",
)


@dataclass(frozen=True)
class MergeResult:
    merged_dir: str
    max_abs_logit_diff: float      # merged vs adapter on the unquantised base: exact up to float error
    tolerance: float
    passed: bool
    # QLoRA: merged vs the model as trained (adapter on the 4/8-bit base). Differs by the base's
    # quantisation error, so a QLoRA run needs a looser merge_tolerance (see configs/qlora.yaml).
    max_abs_logit_diff_vs_quantized: float | None = None


class MergeFidelityError(RuntimeError):
    """The merged model's logits drifted from the adapter model's beyond the tolerance."""


def probe_batch(tokenizer) -> dict[str, torch.Tensor]:
    return tokenizer(list(PROBE_TEXTS), return_tensors="pt", padding=True)


@torch.no_grad()
def _logits(model, batch) -> torch.Tensor:
    return model(**batch).logits.float()


def _ship_full_checkpoint(trained: Path, out_dir: Path, tolerance: float) -> MergeResult:
    """A full fine-tune is already a plain checkpoint: hard-link it into place (no second copy)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in trained.iterdir():
        target = out_dir / f.name
        target.unlink(missing_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)
    result = MergeResult(str(out_dir), 0.0, tolerance, True, None)
    (out_dir / "merge_fidelity.json").write_text(json.dumps(asdict(result), indent=1))
    return result


def merge(base_path: str, adapter_dir: str, out_dir: str | Path, tolerance: float, train_cfg=None,
          trust_remote_code: bool = False) -> MergeResult:
    """`train_cfg` with quantization_bit set: also compare with the adapter on the quantised base."""
    out_dir = Path(out_dir)
    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        return _ship_full_checkpoint(Path(adapter_dir), out_dir, tolerance)
    # A vision-language model: its processor (tokenizer + image processor), and a probe with images.
    is_vlm = vision.is_vision_language(base_path)
    tokenizer = (AutoProcessor if is_vlm else AutoTokenizer).from_pretrained(adapter_dir, trust_remote_code=trust_remote_code)
    # fp32 base, never a quantised one: merging into 4-bit weights rounds the update away.
    base = vision.model_class(base_path).from_pretrained(base_path, dtype=torch.float32, trust_remote_code=trust_remote_code)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    batch = vision.probe_batch(tokenizer, PROBE_TEXTS) if is_vlm else probe_batch(tokenizer)
    mask = batch["attention_mask"].bool()
    before = _logits(model, batch)[mask]
    merged = model.merge_and_unload()
    after = _logits(merged, batch)[mask]
    diff = float((before - after).abs().max())
    qdiff = None
    if train_cfg is not None and train_cfg.quantization_bit:
        from peftflow.train import load_base

        trained = PeftModel.from_pretrained(load_base(base_path, train_cfg), adapter_dir).eval()
        qdiff = float((_logits(trained, batch)[mask] - after).abs().max())
        del trained

    merged.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    worst = max(diff, qdiff or 0.0)
    result = MergeResult(str(out_dir), diff, tolerance, worst <= tolerance, qdiff)
    (out_dir / "merge_fidelity.json").write_text(json.dumps(asdict(result), indent=1))
    if diff > tolerance:
        raise MergeFidelityError(f"merged model differs from the adapter model by {diff:.2e} > {tolerance:.0e}")
    if qdiff is not None and qdiff > tolerance:
        raise MergeFidelityError(
            f"merged model differs from the {train_cfg.quantization_bit}-bit training model by {qdiff:.2e} > "
            f"merge_tolerance {tolerance:.0e} (quantisation error: QLoRA runs need a looser merge_tolerance)")
    return result
