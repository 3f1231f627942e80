"""The reference model of the preference stages (dpo, kto): resolved from `ref_model` or, by default,
the trained model with its adapter off; and its log-probs of every training row's two sequences (a
pair's chosen and rejected answer; a KTO row and its KL row), computed once and cached by reference
model, data and how the model was loaded: a rerun, a resumed run or a run with another `pref_loss`
or `pref_beta` reads them instead of keeping a reference model beside the policy."""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from pathlib import Path

import torch

from peftflow.evaluation.pairs import PAIR_COLUMNS, pair_logps
from peftflow.models.resolve import resolve_model
from peftflow.paths import cache_dir
from peftflow.stages.workflow import RunModels, Workflow

LOAD_KEYS = ("quantization_bit", "quantization_type", "double_quantization", "compute_dtype", "bf16", "fp16")


def cache_path(cfg, reference_fingerprint: str, data_path: str) -> Path:
    """One file per reference model, prepared data (its dir is named by its fingerprint) and load settings."""
    load = hashlib.sha256(json.dumps({k: getattr(cfg, k) for k in LOAD_KEYS}, sort_keys=True).encode())
    return cache_dir("reference") / f"{reference_fingerprint}-{Path(data_path).name}-{load.hexdigest()[:8]}.safetensors"


def reference_logps(
    scorer, rows, pad_id: int, path: Path, batch_size: int = 8, autocast=nullcontext, second=PAIR_COLUMNS
) -> torch.Tensor:
    """[N, 4] pair_logps of `rows` read from `path`, else computed under the model `scorer()` returns,
    in eval mode (a peft model with its adapter switched off: LLaMA-Factory's reference for LoRA)."""
    from safetensors.torch import load_file, save_file

    if path.is_file():
        return load_file(str(path))["logps"]
    model = scorer()
    was_training = model.training
    model.eval()
    off = model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()
    with off, autocast():
        logps = pair_logps(model, rows, pad_id, batch_size, second)
    model.train(was_training)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"logps": logps.contiguous()}, str(tmp))
    tmp.replace(path)
    return logps


class ReferenceWorkflow(Workflow):
    """What the preference stages add to a run: the reference model (`ref_model`, when given) resolved,
    scored beside base and fine-tune, and named in the lineage."""

    def resolve(self, cfg) -> RunModels:
        models = super().resolve(cfg)
        if not cfg.ref_model:
            return models
        reference = resolve_model(cfg.ref_model, cfg.allow_pickle_weights, cfg.storage, key="ref_model")
        return RunModels(models.model, {"reference": reference})

    def evaluation_models(self, models: RunModels) -> dict[str, str]:
        return {"reference": models.extras["reference"].path} if "reference" in models.extras else {}

    def lineage_tags(self, cfg, models: RunModels) -> dict[str, str]:
        reference = models.extras.get("reference", models.model)
        return {"ref_model": cfg.ref_model or "", "ref_model_fingerprint": reference.fingerprint}

    def reference_source(self, models: RunModels) -> tuple[str, str | None]:
        """(fingerprint, path to load or None: the trained model itself with its adapter off)."""
        reference = models.extras.get("reference")
        return (reference or models.model).fingerprint, reference.path if reference else None
