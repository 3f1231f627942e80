"""Where a fine-tune comes from: the train key (same key, same trained weights: reuse them; its run
dir is peftflow/run_dir.py), the code version, and the lineage recorded on the run and the version."""

from __future__ import annotations

import hashlib
import json
import subprocess
from functools import lru_cache
from pathlib import Path

import peftflow
from peftflow.config import RunConfig
from peftflow.config.checks import given
from peftflow.config.form import FLAT
from peftflow.data import PreparedData
from peftflow.stages import STAGES, get_workflow
from peftflow.stages.workflow import RunModels

# Sections that change publishing or scoring, not the trained weights; and the keys that name a
# stage's extra models (a teacher), which are keyed by content fingerprint, not by how they were named.
_NOT_TRAINING = {
    "registry",
    "promotion",
    "evaluation",
    "merge",
    "merge_tolerance",
    "quantized_merge_tolerance",
    "output_dir",
    "on_invalid_rows",
    "storage",
    "resume_from_checkpoint",  # where a run starts from, not what it trains: `true` finds the same run dir
    *(key for stage in STAGES.values() for key in stage.models_by_content),
}

# The training fields the key hashed when it was defined (RunConfig at commit 7a2ffee). A field added
# since is hashed only when it differs from its default: adding a field must not change the key of
# every run already trained (and so retrain them all), and a field at its default trains as before.
KEYED_AT_DEFINITION = frozenset(
    {
        "additional_target",
        "allow_pickle_weights",
        "bf16",
        "bf16_autocast",
        "compute_dtype",
        "cutoff_len",
        "dataset",
        "dataset_dir",
        "double_quantization",
        "encoder_hidden_size",
        "encoder_reparameterization_type",
        "finetuning_type",
        "fp16",
        "freeze_multi_modal_projector",
        "freeze_vision_tower",
        "gradient_accumulation_steps",
        "gradient_checkpointing",
        "kd_chunk_size",
        "kd_direction",
        "kd_ratio",
        "kd_temperature",
        "learning_rate",
        "logging_steps",
        "lora_alpha",
        "lora_dropout",
        "lora_init",
        "lora_rank",
        "lora_target",
        "lr_scheduler_type",
        "mask_history",
        "max_grad_norm",
        "max_samples",
        "max_steps",
        "model_name_or_path",
        "nnodes",
        "num_processes",
        "num_train_epochs",
        "num_virtual_tokens",
        "optim",
        "per_device_train_batch_size",
        "pissa_init",
        "prefix_projection",
        "prompt_tuning_init",
        "prompt_tuning_init_text",
        "quantization_bit",
        "quantization_method",
        "quantization_type",
        "save_steps",
        "save_total_limit",
        "seed",
        "stage",
        "student_layers",
        "teacher_topk",
        "template",
        "train_on_prompt",
        "train_projector",
        "trust_remote_code",
        "use_dora",
        "use_rslora",
        "val_size",
        "warmup_ratio",
        "warmup_steps",
        "weight_decay",
    }
)

# Template names renamed without a change of meaning: hashed under the old name, so the runs keep
# their key. (The new `default`, LLaMA-Factory's Human/Assistant template, is told apart from the old
# one by the data fingerprint, which is also in the key.)
_FORMER_TEMPLATE_NAMES = {"tokenizer": "default"}


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_key(cfg: RunConfig, model_fingerprint: str, data_fingerprint: str, extras_fingerprint: str = "") -> str:
    """`extras_fingerprint`: the stage's extra models (RunModels.extras_fingerprint), "" for none."""
    training = {
        k: v
        for k, v in cfg.model_dump(mode="json", context=FLAT).items()
        if k not in _NOT_TRAINING and (k in KEYED_AT_DEFINITION or given(cfg, k))
    }
    training["template"] = _FORMER_TEMPLATE_NAMES.get(cfg.template, cfg.template)
    return _digest(training, model_fingerprint, data_fingerprint, extras_fingerprint)


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    root = Path(peftflow.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{peftflow.__version__}+{sha}" if sha else peftflow.__version__


def lineage(cfg: RunConfig, models: RunModels, data: PreparedData, key: str, flow_run_id: str) -> dict[str, str]:
    """The tags that say what a run trained: base (and the registered version it is, if any), data,
    config, method, code, orchestration run; and what its stage adds (a distillation run: the
    teacher and how the student was made)."""
    tags = {
        "base_model": cfg.model_name_or_path,
        "base_model_fingerprint": models.model.fingerprint,
        "data_fingerprint": data.fingerprint,
        "config_fingerprint": cfg.fingerprint(),
        "method": cfg.finetuning_type,
        "stage": cfg.stage,
        "prefect_flow_run_id": flow_run_id,
        "code_version": code_version(),
        "train_key": key,
    }
    if models.model.registered:  # started from a registered version (an SFT champion): its parent
        tags["parent_version"] = models.model.registered
    return tags | get_workflow(cfg).lineage_tags(cfg, models)
