"""Registered versions as plain local model directories (cached), and as MLflow pipelines."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from peftflow.atomic import build_once
from peftflow.errors import UserError
from peftflow.mlflow_io.tracking import configure_mlflow
from peftflow.mlflow_io.versions import ModelVersionRef, get_version_by_alias
from peftflow.paths import cache_dir

# MLflow's transformers layout: model/ (or peft/ for an adapter) + components/tokenizer/, and for a
# vision-language version logged before it became a pyfunc, components/image_processor/ +
# components/processor/. A vision-language version now is a pyfunc whose artifact `model` is the
# merged dir (serving/vision_chat_model.py).
_MODEL_PARTS = ("model", "peft", "components/tokenizer", "components/image_processor", "components/processor")


def load_pipeline(model_uri: str):
    """`models:/NAME@champion`, `models:/NAME/3`, ... -> a transformers text-generation pipeline."""
    import mlflow

    configure_mlflow()
    return mlflow.transformers.load_model(model_uri)


def local_version(ref: ModelVersionRef) -> tuple[str, str | None]:
    """A registered version as (local model dir, the base dir it loads onto or None). An adapter
    version loads onto the base it was published with (its `base_model_path` tag), whatever base
    the current run trains: that is what it served with."""
    model_dir = download_model_dir(ref.uri)
    base = ref.tags.get("base_model_path") if ref.tags.get("peftflow.kind") == "adapter" else None
    if base is not None and not (Path(base) / "config.json").is_file():
        raise UserError(
            f"{ref.name} v{ref.version} is an adapter on the base {base}, which is not on this machine; "
            "resolve that base here first (or publish merged versions)"
        )
    return model_dir, base


def local_versions(refs: dict[str, ModelVersionRef]) -> tuple[dict[str, str], dict[str, str]]:
    """Labelled versions as (label -> local model dir, label -> base dir of each adapter version),
    the two mappings `evaluation.scoring` takes."""
    models, bases = {}, {}
    for label, ref in refs.items():
        models[label], base = local_version(ref)
        if base:
            bases[label] = base
    return models, bases


def pinned_uri(model_uri: str) -> str:
    """`models:/NAME@ALIAS` as the version the alias names now (`models:/NAME/VERSION`); any other
    reference as it is."""
    configure_mlflow()
    m = re.fullmatch(r"models:/([^/@]+)@([^/]+)", model_uri)
    if not m:
        return model_uri
    ref = get_version_by_alias(m[1], m[2])
    if ref is None:
        raise LookupError(f"{model_uri}: no such registered model or alias")
    return ref.uri


def download_model_dir(model_uri: str) -> str:
    """A registered model as a plain local transformers dir (config, weights or adapter, tokenizer)
    that `from_pretrained` reads. An alias is pinned to its version first; versions are cached.
    A reference that names no fixed version (`models:/NAME/latest`) is downloaded each time and
    kept under the id of the model it resolved to."""
    model_uri = pinned_uri(model_uri)
    root = cache_dir("registry")
    if re.fullmatch(r"models:/([^/@]+/\d+|m-[0-9a-f]+)", model_uri):
        slot = root / hashlib.sha256(model_uri.encode()).hexdigest()[:16]
        return str(build_once(slot, lambda out: _download(model_uri, out), ready=Path.is_dir))
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        model_id = _download(model_uri, Path(tmp) / "model")
        slot = root / f"unpinned-{hashlib.sha256(f'{model_uri}@{model_id}'.encode()).hexdigest()[:16]}"
        build_once(slot, lambda out: os.replace(Path(tmp) / "model", out), ready=Path.is_dir)
    return str(slot)


def _download(model_uri: str, out: Path) -> str:
    """Download `model_uri` and move its model and processor files flat into `out` (created);
    returns the id of the logged model it came from."""
    import mlflow
    import yaml

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".raw-") as tmp:
        raw = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        out.mkdir(parents=True, exist_ok=True)
        mlmodel = yaml.safe_load((raw / "MLmodel").read_text()) if (raw / "MLmodel").is_file() else {}
        pyfunc_artifacts = mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts") or {}
        for sub in [a["path"] for a in pyfunc_artifacts.values()] or _MODEL_PARTS:
            if (raw / sub).is_dir():
                for f in (raw / sub).iterdir():
                    os.replace(f, out / f.name)
    return str(mlmodel.get("model_id") or mlmodel.get("model_uuid") or "")
