"""Resolve a model reference to a local safetensors directory plus a content fingerprint.

Accepted references:
  builtin:NAME                   a model peftflow ships or builds (peftflow.builtin.models), built
                                 once into the model cache
  /a/local/dir                   any transformers checkpoint saved as safetensors.
  org/name                       a hub id; resolved from the local HF cache only when offline.
  models:/NAME@ALIAS, models:/NAME/VERSION
                                 a merged model version in the MLflow registry (downloaded once).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from peftflow.builtin.models import BUILDERS, recipe_fingerprint
from peftflow.errors import UserError
from peftflow.mlflow_io.downloads import download_model_dir, pinned_uri
from peftflow.paths import cache_dir
from peftflow.store import build_sealed


@dataclass(frozen=True)
class ResolvedModel:
    ref: str  # what the config said
    path: str  # local directory with config.json, safetensors, tokenizer
    fingerprint: str  # content hash of config + weights + tokenizer
    registered: str = ""  # a registry reference pinned to its version (models:/NAME/VERSION), else ""


def resolve_model(
    ref: str, allow_pickle_weights: bool = False, storage: str | None = None, key: str = "model_name_or_path"
) -> ResolvedModel:
    """`storage`: the run store (else `PEFTFLOW_STORAGE`), where built-in models are kept once built.
    `key`: the config key `ref` came from (`teacher`, `model`, ...), the one an error names."""
    registered = ""
    if ref.startswith("builtin:"):
        path = _builtin(ref.removeprefix("builtin:"), storage, key)
    elif ref.startswith("models:/"):
        registered = registry_version(ref, key)
        path = _from_registry(registered, key)
    elif Path(ref).expanduser().is_dir():
        path = Path(ref).expanduser().resolve()
    elif ref.startswith(("/", ".", "~")):
        raise UserError(f"{key}: directory not found: {ref}")
    else:
        path = _from_hub(ref, key)
    check_weights_are_safetensors(path, allow_pickle_weights, key)
    return ResolvedModel(ref, str(path), fingerprint_dir(path), registered)


def check_weights_are_safetensors(
    path: Path, allow_pickle_weights: bool = False, key: str = "model_name_or_path"
) -> None:
    """Pickle checkpoints can run code on load; peftflow reads safetensors unless the config sets
    `allow_pickle_weights: true` (transformers then loads them with torch's weights_only loader)."""
    if not (path / "config.json").is_file():
        raise UserError(f"{key}: {path} has no config.json; not a transformers model")
    if not list(path.glob("*.safetensors")):
        pickles = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        if pickles and allow_pickle_weights:
            return
        what = f"only pickle weights ({', '.join(pickles)})" if pickles else "no weights"
        hint = "; convert the model to safetensors" + (" or set allow_pickle_weights: true" if pickles else "")
        raise UserError(f"{key}: {path} has {what}{hint}")


def fingerprint_dir(path: Path) -> str:
    """sha256 over the files that define the model, memoised by (name, size, mtime)."""
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and p.suffix in {".json", ".safetensors", ".jinja", ".txt", ".model", ".bin", ".pt"}
    )
    stat_key = hashlib.sha256(
        json.dumps([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]).encode()
    ).hexdigest()
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


def _builtin(name: str, storage: str | None = None, key: str = "model_name_or_path") -> Path:
    """Built once per home; with a run store, fetched sealed from it when another machine built it
    (a GGUF conversion is slower than the download), and sealed there when built here."""
    if name not in BUILDERS:
        raise UserError(
            f"{key}: unknown built-in model 'builtin:{name}' (have: {', '.join('builtin:' + b for b in BUILDERS)})"
        )
    return build_sealed(
        storage,
        f"cache/models/{name}/{recipe_fingerprint(name)}",
        cache_dir("models") / name,
        lambda out: BUILDERS[name](out, lambda other: _builtin(other, storage)),
        ready=lambda target: (target / "config.json").is_file(),
    )


def registry_version(uri: str, key: str = "model_name_or_path") -> str:
    """`uri` pinned to a version: an alias read once, so the run and its lineage name one version."""
    try:
        return pinned_uri(uri)
    except LookupError as e:
        raise UserError(f"{key}: model reference {uri}: {e}") from None


def _from_registry(uri: str, key: str) -> Path:
    try:
        path = Path(download_model_dir(uri))
    except LookupError as e:
        raise UserError(f"{key}: model reference {uri}: {e}") from None
    if (path / "adapter_config.json").is_file():
        raise UserError(
            f"{key}: model reference {uri} is an adapter version; use a merged version or its base plus teacher_adapter"
        )
    return path


def _from_hub(repo_id: str, key: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    try:
        return Path(
            snapshot_download(
                repo_id,
                local_files_only=offline,
                allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"],
            )
        )
    except LocalEntryNotFoundError:
        raise UserError(
            f"{key}: '{repo_id}' is not in the local Hugging Face cache and the hub is not reachable (offline); "
            "download it first or use a local directory"
        ) from None
    except (HfHubHTTPError, OSError) as e:
        raise UserError(
            f"{key}: cannot fetch '{repo_id}' from the hub: {type(e).__name__}; offline runs need a local directory or "
            "builtin: model"
        ) from None
