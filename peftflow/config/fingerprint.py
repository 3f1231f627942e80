"""A run config's fingerprint: the `config_fingerprint` tag that `retrain` compares with the champion's
(a changed fingerprint retrains it), and what tells a sweep's variants apart."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

from peftflow.config.checks import given
from peftflow.config.form import FLAT

# RunConfig's fields, and its sections' (dotted), when the fingerprint stopped hashing every field
# (commit b3e8e27). These are always hashed, so a config keeps the fingerprint it had; a field added
# since (a section's too) is hashed only when it differs from its default: adding a key must not
# change every config's fingerprint and so retrain every champion.
FINGERPRINTED_AT_FREEZE = frozenset(
    """
    model_name_or_path dataset dataset_dir finetuning_type stage template learning_rate num_train_epochs
    max_steps per_device_train_batch_size gradient_accumulation_steps cutoff_len val_size lora_rank
    lora_alpha lora_dropout lora_target additional_target use_dora use_rslora lora_init pissa_init
    lr_scheduler_type warmup_ratio warmup_steps weight_decay max_grad_norm optim seed logging_steps
    save_steps save_total_limit bf16 fp16 bf16_autocast gradient_checkpointing storage output_dir
    max_samples train_dataset train_on_prompt mask_history enable_thinking preserve_thinking tool_format
    default_system on_invalid_rows registry evaluation promotion merge merge_tolerance
    quantized_merge_tolerance num_virtual_tokens prefix_projection prompt_tuning_init
    prompt_tuning_init_text encoder_reparameterization_type encoder_hidden_size quantization_bit
    quantization_method quantization_type double_quantization compute_dtype freeze_vision_tower
    train_projector freeze_multi_modal_projector teacher teacher_adapter student_layers kd_temperature
    kd_ratio kd_direction kd_chunk_size teacher_topk kd_unlabeled_dataset kd_label_temperature
    kd_label_max_new_tokens num_processes nnodes trust_remote_code allow_pickle_weights

    registry.name registry.experiment registry.description registry.gguf_outtype registry.vllm_ready

    evaluation.metric evaluation.max_samples evaluation.max_new_tokens evaluation.batch_size
    evaluation.harness_tasks evaluation.harness_include

    promotion.metric promotion.min_improvement promotion.auto_promote promotion.bootstrap_samples
    promotion.confidence promotion.require_approval promotion.approval_timeout_s promotion.harness_metric
    promotion.guard_dataset promotion.guard_tolerance promotion.guard_max_samples promotion.guard_on_manual
    """.split()
)

# Never hashed: the registered model's description, the run store and where a run resumes from
# change no result (and, added later, left the fingerprints as they were).
_LEFT_OUT: dict[str, Any] = {"registry": {"description"}, "storage": True, "resume_from_checkpoint": True}


def fingerprint_of(cfg: BaseModel) -> str:
    """16 hex digits of the flat config's hashed fields (`hashed_fields`)."""
    blob = json.dumps(hashed_fields(cfg), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def hashed_fields(cfg: BaseModel) -> dict[str, Any]:
    """The flat JSON dump of what the fingerprint covers: the fields frozen above, and any other that
    is given; a section holds its keys by the same rule, and a section added since only given ones."""
    return _covered(cfg, cfg.model_dump(mode="json", context=FLAT, exclude=_LEFT_OUT), "")


def _covered(model: BaseModel, dumped: dict[str, Any], prefix: str) -> dict[str, Any]:
    out = {}
    for key, value in dumped.items():
        name, field = prefix + key, getattr(model, key)
        if isinstance(field, BaseModel):  # a section
            keys = _covered(field, value, name + ".")
            if keys or name in FINGERPRINTED_AT_FREEZE:
                out[key] = keys
        elif name in FINGERPRINTED_AT_FREEZE or given(model, key):
            out[key] = value
    return out
