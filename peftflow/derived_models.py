"""Models built once from others into the model cache, keyed by their sources' content: a base with
an adapter merged in, and a base with its rotary embedding scaled. A run that starts from an adapter
(an SFT adapter dir, or a registered adapter version, given as `model_name_or_path`) trains on its
base with it merged; so does a distillation teacher with `teacher_adapter`. A run with `rope_scaling`
trains, scores and publishes the scaled model, so what is served reads positions as training did."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import replace
from pathlib import Path

from peftflow.atomic import build_once
from peftflow.errors import UserError
from peftflow.merge import merge
from peftflow.mlflow_io.downloads import download_model_dir
from peftflow.models.resolve import ResolvedModel, fingerprint_dir, registry_version, resolve_model
from peftflow.paths import cache_dir

log = logging.getLogger("peftflow.models")

ADAPTER_CONFIG = "adapter_config.json"
# rope types whose formula reads the length the model was trained at
_NEEDS_ORIGINAL_LENGTH = ("dynamic", "yarn", "llama3")


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
    first; the result keeps the registered version it came from, for the lineage. With
    `rope_scaling`, its rotary embedding is scaled to `cutoff_len`."""
    return with_rope_scaling(_start_model(cfg, key), cfg)


def _start_model(cfg, key: str) -> ResolvedModel:
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


def with_rope_scaling(model: ResolvedModel, cfg) -> ResolvedModel:
    """LLaMA-Factory's `rope_scaling` rule: when cutoff_len is longer than the model's
    max_position_embeddings, the rotary embedding of type `rope_scaling` is stretched by
    ceil(cutoff_len / max_position_embeddings) and the model's length raised to cutoff_len; when it
    fits, nothing changes. Built once as cache/models/rope-<type>-<factor>-<model fp>."""
    if cfg.rope_scaling is None:
        return model
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model.path, trust_remote_code=cfg.trust_remote_code)
    text = config.get_text_config()
    if not getattr(text, "rope_parameters", None) or not getattr(text, "max_position_embeddings", None):
        raise UserError(f"rope_scaling: {model.ref} has no rotary position embedding to scale")
    longest = text.max_position_embeddings
    if cfg.cutoff_len <= longest:
        log.warning(
            "rope_scaling: cutoff_len %d fits the model's %d positions: not scaled (LLaMA-Factory's rule)",
            cfg.cutoff_len,
            longest,
        )
        return model
    factor = float(math.ceil(cfg.cutoff_len / longest))
    name = f"rope-{cfg.rope_scaling}-{factor:g}-{model.fingerprint}"
    scaled = cached_model(name, lambda out: _write_scaled(model.path, config, out, cfg, factor))
    log.info("rope_scaling: %s x%g, %d -> %d positions", cfg.rope_scaling, factor, longest, cfg.cutoff_len)
    return replace(resolve_model(scaled), ref=model.ref, registered=model.registered)


def _write_scaled(source: str, config, out: Path, cfg, factor: float) -> None:
    """`source`'s files (hard links where the disk allows) with `config`, its config, rope-scaled."""
    for f in Path(source).iterdir():
        if f.is_file() and f.name != "config.json":
            try:
                os.link(f, out / f.name)
            except OSError:  # another file system
                (out / f.name).write_bytes(f.read_bytes())
    text = config.get_text_config()
    original = text.max_position_embeddings
    rope = {**text.rope_parameters, "rope_type": cfg.rope_scaling, "factor": factor}
    if cfg.rope_scaling in _NEEDS_ORIGINAL_LENGTH:
        rope["original_max_position_embeddings"] = original
    if cfg.rope_scaling == "llama3":  # the values Llama 3.1 was published with, as LLaMA-Factory sets
        rope |= {"low_freq_factor": 1.0, "high_freq_factor": 4.0}
    text.rope_parameters, text.max_position_embeddings = rope, cfg.cutoff_len
    text.validate_rope()
    config.save_pretrained(out)
