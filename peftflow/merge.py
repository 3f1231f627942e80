"""Merge an adapter into an unquantised copy of the base, and prove the merge changed nothing.

The shipped model is a plain transformers checkpoint (safetensors + tokenizer + chat template):
no peft at inference, no extra latency.

A plain LoRA adapter is merged shard by shard (`stream_merge`): the base's safetensors are read
one output shard at a time, peft computes each layer's delta (`get_delta_weight`) from the
adapter loaded onto an empty (meta-device) skeleton, and the merged tensors are written before
the next ones are read, so memory holds about one shard plus the adapter, not the model. Other
adapters (DoRA, IA3, modules_to_save, ...) use peft's `merge_and_unload` on the whole model.
The fidelity check then loads one model at a time: the adapter on the base, then the merge.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel, get_peft_model
from peft.tuners.lora import Linear as LoraLinear
from peft.utils import load_peft_weights
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor, AutoTokenizer

from peftflow.builtin.probes import image_probe_batch, probe_batch
from peftflow.models import heads, vision
from peftflow.models.load import load_base

log = logging.getLogger("peftflow.merge")


@dataclass(frozen=True)
class MergeResult:
    merged_dir: str
    max_abs_logit_diff: float  # merged vs adapter on the unquantised base: exact up to float error
    tolerance: float
    passed: bool
    # QLoRA: merged vs the model as trained (adapter on the 4/8-bit base). They differ by the base's
    # quantisation error, checked against quantized_merge_tolerance where set (see configs/qlora.yaml);
    # the share of probe positions where both predict the same next token says what that error does.
    max_abs_logit_diff_vs_quantized: float | None = None
    top1_agreement_vs_quantized: float | None = None


class MergeFidelityError(RuntimeError):
    """The merged model's logits drifted from the adapter model's beyond the tolerance."""


@torch.no_grad()
def _logits(model, batch) -> torch.Tensor:
    """The probe's logits at its real tokens (a reward model's: one score per row)."""
    logits = model(**batch).logits.float()
    return logits[batch["attention_mask"].bool()] if logits.dim() == 3 else logits


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


def merge(
    base_path: str,
    adapter_dir: str,
    out_dir: str | Path,
    tolerance: float,
    train_cfg=None,
    trust_remote_code: bool = False,
) -> MergeResult:
    """`train_cfg` with quantization_bit set: also compare with the adapter on the quantised base."""
    out_dir = Path(out_dir)
    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        return _ship_full_checkpoint(Path(adapter_dir), out_dir, tolerance)
    # A vision-language model: its processor (tokenizer + image processor), and a probe with images.
    is_vlm = vision.is_vision_language(base_path)
    tokenizer = (AutoProcessor if is_vlm else AutoTokenizer).from_pretrained(
        adapter_dir, trust_remote_code=trust_remote_code
    )
    batch = image_probe_batch(tokenizer) if is_vlm else probe_batch(tokenizer)
    reward = heads.is_reward_adapter(adapter_dir)
    log.info("merging the adapter into its base: %s", out_dir)
    if is_vlm or not stream_merge(base_path, adapter_dir, out_dir, trust_remote_code):
        _merge_in_memory(base_path, adapter_dir, out_dir, trust_remote_code)
    tokenizer.save_pretrained(out_dir)
    if not reward:  # a reward model does not generate
        _stop_at_end_of_turn(
            out_dir, getattr(tokenizer, "tokenizer", tokenizer), train_cfg.template if train_cfg else "default"
        )
    # One model in memory at a time: the adapter on the fp32 base, then the merged checkpoint.
    before = _logits(_adapter_model(base_path, adapter_dir, trust_remote_code), batch)
    after = _logits(heads.load(out_dir, reward, dtype=torch.float32, trust_remote_code=trust_remote_code), batch)
    diff = float((before - after).abs().max())
    log.info("merge check: max |logit diff| vs the adapter %.1e (tolerance %.0e)", diff, tolerance)
    qdiff = agreement = qtolerance = None
    if train_cfg is not None and train_cfg.quantization_bit:
        trained = PeftModel.from_pretrained(load_base(base_path, train_cfg), adapter_dir).eval()
        quantized = _logits(trained, batch)
        del trained
        qdiff = float((quantized - after).abs().max())
        if not reward:  # a reward model predicts no next token: one score, compared by qdiff alone
            agreement = float((quantized.argmax(-1) == after.argmax(-1)).float().mean())
        qtolerance = train_cfg.quantized_merge_tolerance

    passed = diff <= tolerance and (qtolerance is None or qdiff <= qtolerance)
    result = MergeResult(str(out_dir), diff, tolerance, passed, qdiff, agreement)
    (out_dir / "merge_fidelity.json").write_text(json.dumps(asdict(result), indent=1))
    if diff > tolerance:
        raise MergeFidelityError(
            f"merged model differs from the adapter model by {diff:.2e} > merge_tolerance {tolerance:.0e}"
        )
    if qtolerance is not None and qdiff > qtolerance:
        raise MergeFidelityError(
            f"merged model differs from the {train_cfg.quantization_bit}-bit training model by {qdiff:.2e} > "
            f"quantized_merge_tolerance {qtolerance:.0e} (the base's quantisation error"
            + (f"; next-token agreement {agreement:.0%})" if agreement is not None else ")")
        )
    return result


def _stop_at_end_of_turn(out_dir: Path, tokenizer, template: str) -> None:
    """A server stops generating at the generation config's EOS, which comes from the base: it must
    include the token the chat template ends an assistant turn with (the one training taught), or
    the served fine-tune never stops (a base whose EOS is end-of-text, a template with its own
    end-of-turn). Added beside the base's EOS ids, never in place of them."""
    from transformers import GenerationConfig

    from peftflow.data.templates import end_of_turn_token_id
    from peftflow.errors import UserError

    try:
        end = end_of_turn_token_id(tokenizer, template)
    except UserError:  # no chat template to end a turn (a plain LM merged outside a run): nothing to add
        return
    if (out_dir / "generation_config.json").is_file():
        generation = GenerationConfig.from_pretrained(out_dir)
    else:
        generation = GenerationConfig.from_model_config(AutoConfig.from_pretrained(out_dir, trust_remote_code=False))
    eos = generation.eos_token_id
    ids = list(eos) if isinstance(eos, (list, tuple)) else [] if eos is None else [eos]
    if end is not None and end not in ids:
        generation.eos_token_id = ids + [end] if ids else end
        generation.save_pretrained(out_dir)


def _adapter_model(base_path: str, adapter_dir: str, trust_remote_code: bool):
    # fp32 base, never a quantised one: merging into 4-bit weights rounds the update away.
    reward = heads.is_reward_adapter(adapter_dir)  # the base with the head the adapter trained
    base = heads.load(base_path, reward, adapter_dir, dtype=torch.float32, trust_remote_code=trust_remote_code)
    return PeftModel.from_pretrained(base, adapter_dir).eval()


def _merge_in_memory(base_path: str, adapter_dir: str, out_dir: Path, trust_remote_code: bool) -> None:
    merged = _adapter_model(base_path, adapter_dir, trust_remote_code).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)


def _lora_deltas(base_path: str, adapter_dir: str, trust_remote_code: bool) -> dict[str, LoraLinear] | None:
    """Checkpoint weight name -> the LoRA layer whose delta it takes, from an adapter loaded onto
    an empty skeleton of the base. None when the adapter is not plain LoRA on linear layers."""
    from accelerate import init_empty_weights

    adapter = PeftConfig.from_pretrained(adapter_dir)
    if (
        adapter.peft_type != "LORA"
        or adapter.use_dora
        or adapter.modules_to_save
        or getattr(adapter, "lora_bias", False)
        or getattr(adapter, "target_parameters", None)
    ):
        return None
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(
            AutoConfig.from_pretrained(base_path, trust_remote_code=trust_remote_code),
            trust_remote_code=trust_remote_code,
        )
    model = get_peft_model(skeleton, adapter, low_cpu_mem_usage=True)  # structure and scaling, meta weights
    prefix = "base_model.model."
    layers = {name: m for name, m in model.named_modules() if hasattr(m, "lora_A")}
    if not all(isinstance(m, LoraLinear) for m in layers.values()):
        return None
    state = load_peft_weights(adapter_dir, device="cpu")
    for name, layer in layers.items():
        for part in ("lora_A", "lora_B"):  # peft saves them without the adapter name
            weight = state.pop(f"{name}.{part}.weight", None)
            if weight is None:
                return None
            getattr(layer, part)["default"].weight = torch.nn.Parameter(weight, requires_grad=False)
    if state:
        return None  # weights this merge does not know where to put
    return {name.removeprefix(prefix) + ".weight": m for name, m in layers.items()}


def _base_shards(base_path: str) -> list[Path]:
    index = Path(base_path) / "model.safetensors.index.json"
    if index.is_file():
        return [Path(base_path) / f for f in dict.fromkeys(json.loads(index.read_text())["weight_map"].values())]
    single = Path(base_path) / "model.safetensors"
    return [single] if single.is_file() else []


def stream_merge(base_path: str, adapter_dir: str, out_dir: str | Path, trust_remote_code: bool = False) -> bool:
    """Merge a plain LoRA adapter shard by shard into fp32 safetensors in `out_dir` (config and
    generation config too). Returns False, writing nothing, when the adapter or the base does not
    allow it; the caller then merges in memory."""
    out_dir = Path(out_dir)
    shards = _base_shards(base_path)
    deltas = _lora_deltas(base_path, adapter_dir, trust_remote_code) if shards else None
    if not deltas:
        return False
    names = {}
    for shard in shards:
        with safe_open(shard, "pt") as f:
            names[shard] = list(f.keys())
    if not set(deltas) <= {n for keys in names.values() for n in keys}:
        return False  # the checkpoint names weights differently from the modules (renamed or fused)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob("*.safetensors"), *out_dir.glob("*.safetensors.index.json")]:
        stale.unlink()  # a previous merge's layout must not mix with this one
    # Written in pieces of at most half the largest base shard (in fp32): save_file holds a piece
    # and its serialised bytes at once, so the peak stays near one base shard.
    budget = max(_fp32_bytes(s) for s in shards) // 2
    pieces, total = [], 0
    for shard in shards:
        keys = names[shard]
        while keys:
            piece, size = {}, 0
            # safe_open per piece: the file's mapped pages leave the process with it.
            with safe_open(shard, "pt") as f:
                while keys and (not piece or size + _numel(f, keys[0]) * 4 <= budget):
                    name = keys.pop(0)
                    tensor = f.get_tensor(name).float()
                    if name in deltas:
                        with torch.no_grad():
                            tensor += deltas[name].get_delta_weight("default").to(tensor.dtype)
                    piece[name] = tensor
                    size += tensor.numel() * 4
            pieces.append(list(piece))
            file = out_dir / f"part-{len(pieces):05d}.safetensors"
            save_file(piece, file, metadata={"format": "pt"})
            total += size
            del piece
    _name_shards(out_dir, pieces, total)
    config = AutoConfig.from_pretrained(base_path, trust_remote_code=trust_remote_code)
    config.dtype = torch.float32
    config.save_pretrained(out_dir)
    if (Path(base_path) / "generation_config.json").is_file():
        shutil.copy2(Path(base_path) / "generation_config.json", out_dir / "generation_config.json")
    return True


def _numel(f, name: str) -> int:
    return math.prod(f.get_slice(name).get_shape())


def _fp32_bytes(shard: Path) -> int:
    with safe_open(shard, "pt") as f:
        return sum(_numel(f, n) for n in f.keys()) * 4


def _name_shards(out_dir: Path, pieces: list[list[str]], total: int) -> None:
    """transformers' layout: one model.safetensors, or numbered shards plus an index."""
    if len(pieces) == 1:
        (out_dir / "part-00001.safetensors").replace(out_dir / "model.safetensors")
        return
    weight_map = {}
    for i, names in enumerate(pieces, 1):
        name = f"model-{i:05d}-of-{len(pieces):05d}.safetensors"
        (out_dir / f"part-{i:05d}.safetensors").replace(out_dir / name)
        weight_map |= dict.fromkeys(names, name)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
