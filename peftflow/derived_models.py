"""Models built once from others into the model cache, keyed by their sources' content: a base with
an adapter merged in. A run that starts from an adapter (an SFT adapter dir, or a registered adapter
version, given as `model_name_or_path`) trains on its base with it merged; so does a distillation
teacher with `teacher_adapter`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from peftflow.atomic import build_once
from peftflow.errors import UserError
from peftflow.merge import merge
from peftflow.mlflow_io.downloads import download_model_dir
from peftflow.models.resolve import ResolvedModel, fingerprint_dir, registry_version, resolve_model
from peftflow.paths import cache_dir

ADAPTER_CONFIG = "adapter_config.json"


def cached_model(name: str, build) -> str:
    """Build a derived model once into the model cache; return its dir."""
    return str(build_once(cache_dir("models") / name, build, ready=lambda target: (target / "config.json").is_file()))


def with_adapter_merged(base: ResolvedModel, adapter: Path, prefix: str, trust_remote_code: bool) -> ResolvedModel:
    """`base` with the adapter at `adapter` merged in, built once as cache/models/<prefix>-<base fp>-<adapter fp>."""
    name = f"{prefix}-{base.fingerprint}-{fingerprint_dir(adapter)}"
    merged = cached_model(
        name, lambda out: merge(base.path, str(adapter), out, tolerance=1e-3, trust_remote_code=trust_remote_code)
    )
    return resolve_model(merged)


def resolve_start(cfg, key: str = "model_name_or_path") -> ResolvedModel:
    """The model a run starts from (`model_name_or_path`): resolved as any model reference, but an
    adapter (a local adapter dir, or a registered adapter version) is merged into the base it records
    first; the result keeps the registered version it came from, for the lineage."""
    ref = cfg.model_name_or_path
    registered = registry_version(ref, key) if ref.startswith("models:/") else ""
    local = Path(ref).expanduser()
    if registered:
        adapter = Path(download_model_dir(registered))
    elif (local / ADAPTER_CONFIG).is_file():
        adapter = local
    else:
        return resolve_model(ref, cfg.allow_pickle_weights, cfg.storage, key)
    if not (adapter / ADAPTER_CONFIG).is_file():  # a merged registered version
        return resolve_model(ref, cfg.allow_pickle_weights, cfg.storage, key)
    base_ref = json.loads((adapter / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path") or ""
    if not base_ref:
        raise UserError(f"{key}: the adapter {ref} does not name its base model (base_model_name_or_path)")
    base = resolve_model(base_ref, cfg.allow_pickle_weights, cfg.storage, key=f"{key} (the base of adapter {ref})")
    merged = with_adapter_merged(base, adapter, "adapted", cfg.trust_remote_code)
    return replace(merged, ref=ref, registered=registered)
