"""LLaMA-Factory v1 training YAML (`USE_V1=1 llamafactory-cli sft`), mapped onto the flat v0 keys.

A v1 file is known by its shape: `model` instead of `model_name_or_path`, or any key only v1 has
(`peft_config`, `quant_config`, `train_dataset`, `micro_batch_size`, ...). `to_v0` returns the
v0 mapping RunConfig validates, the v1 name of every mapped key (so an error names the key the
user wrote), and the v1 keys that cannot change the run (each with why); v1 keys that would change
it and have no peftflow meaning are refused. Keys and defaults are LLaMA-Factory
0.9.5's (src/llamafactory/v1/config/*.py, plugins/model_plugins/peft.py): where v1 has a default
that differs from peftflow's (learning rate, cutoff, batch size, LoRA rank / alpha / dropout,
template), the v1 default is written into the mapping. bf16 (v1 default true) is taken only
when written, since it changes the numerics on a CPU.
This module does not import RunConfig (run.py imports it).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from peftflow.errors import UserError

V1_ONLY = frozenset(
    {
        "model",
        "model_class",
        "init_config",
        "peft_config",
        "kernel_config",
        "quant_config",
        "flash_attn",
        "train_dataset",
        "eval_dataset",
        "micro_batch_size",
        "global_batch_size",
        "batching_strategy",
        "batching_workers",
        "enable_activation_checkpointing",
        "dist_config",
        "optim_config",
        "lr_scheduler_config",
        "save_epochs",
        "save_ckpt_as_hf",
        "full_determinism",
        "sample_backend",
    }
)
# v0 names of things v1 names differently: a v1 file writing one of these mixes the schemas.
V0_ONLY = frozenset(
    {
        "model_name_or_path",
        "dataset",
        "dataset_dir",
        "finetuning_type",
        "lora_rank",
        "lora_alpha",
        "lora_dropout",
        "lora_target",
        "additional_target",
        "use_dora",
        "use_rslora",
        "quantization_bit",
        "quantization_method",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "gradient_checkpointing",
        "lr_scheduler_type",
        "optim",
    }
)
SAME_NAME = (
    "template",
    "trust_remote_code",
    "output_dir",
    "cutoff_len",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "max_grad_norm",
    "bf16",
    "seed",
    "save_steps",
    "save_total_limit",
    "logging_steps",
)
# v1 keys that cannot change what is trained, scored or kept: the warning gives each reason
SPEED_ONLY = {
    "kernel_config": "fused kernels (Liger and others) change speed and memory, not the result",
    "dist_config": "how training is sharded across GPUs (FSDP2, DeepSpeed); peftflow runs data parallel "
    "with torchrun (num_processes)",
    "init_config": "where the model is materialised while it loads (meta, rank 0); the weights are the same",
    "batching_workers": "data-loader workers",
}
NO_EFFECT = {
    "save_ckpt_as_hf": "peftflow's checkpoints are Hugging Face Trainer checkpoints already",
    "peft_config.export_dir": "an export key: `peftflow export` reads it",
    "peft_config.export_size": "an export key: `peftflow export` reads it",
    "peft_config.export_hub_model_id": "an export key: `peftflow export` reads it",
    "peft_config.infer_dtype": "an export key: `peftflow export` reads it",
    "peft_config.export_legacy_format": "an export key: `peftflow export` reads it",
}
# v1 keys that change the run and have no peftflow meaning: (their default, why refused otherwise)
REFUSED = {
    "optim_config": (None, "LLaMA-Factory 0.9.5 registers no optimizer plugin for it; write `optim` (v0's key)"),
    "save_epochs": (None, "write save_steps (LLaMA-Factory turns save_epochs into steps per epoch)"),
    "full_determinism": (False, "peftflow seeds its runs (seed) but does not force deterministic kernels"),
    "batching_strategy": (
        "normal",
        "it changes which rows share a step; peftflow batches micro_batch_size rows (normal), "
        "and packs rows with neat_packing: true",
    ),
    "peft_config.adapter_name_or_path": (
        None,
        "give the adapter to start from as model (its base is merged with it); `peftflow export` reads it",
    ),
}
FLASH_ATTN = {"eager": "disabled", "sdpa": "sdpa", "flash_attention_2": "fa2"}  # v1 value -> v0 value
V1_DEFAULTS = {
    "template": "qwen3_nothink",
    "learning_rate": 1e-4,
    "cutoff_len": 2048,
    "num_train_epochs": 3,
    "logging_steps": 1,
    "per_device_train_batch_size": 1,
}
LORA_KEYS = {
    "r": ("lora_rank", 8),
    "lora_alpha": ("lora_alpha", 16),
    "lora_dropout": ("lora_dropout", 0.05),
    "target_modules": ("lora_target", "all"),
    "use_rslora": ("use_rslora", False),
    "use_dora": ("use_dora", False),
    "modules_to_save": ("additional_target", None),
}
# peft_config keys written with their v0 / peft names: the v1 key to suggest
PEFT_SYNONYMS = {
    "rank": "r",
    "lora_rank": "r",
    "alpha": "lora_alpha",
    "dropout": "lora_dropout",
    "target": "target_modules",
    "lora_target": "target_modules",
    "additional_target": "modules_to_save",
}
EXPORT_KEYS = (
    "adapter_name_or_path",
    "export_dir",
    "export_size",
    "export_hub_model_id",
    "infer_dtype",
    "export_legacy_format",
)


def is_v1(raw: dict[str, Any]) -> bool:
    """v1 by its shape. A mapping naming `model_name_or_path` is v0: v1 calls it `model`, and a
    RunConfig dumped to JSON (a deployment's parameters) has it, next to `train_dataset`."""
    return "model_name_or_path" not in raw and bool(V1_ONLY & set(raw))


def to_v0(raw: dict[str, Any], source: str) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """(v0 mapping, v0 key -> v1 key, v1 keys read but unused). Other keys (peftflow's sections,
    val_size, ...) pass through unchanged for RunConfig to validate."""
    mixed = sorted(V0_ONLY & set(raw))
    if mixed:
        v1 = sorted(V1_ONLY & set(raw))[0]
        raise UserError(
            f"{source}: mixes LLaMA-Factory v1 keys ({v1}) with v0 keys ({', '.join(mixed)}); "
            f"write one schema (v1 names: model, peft_config, quant_config, train_dataset, micro_batch_size)"
        )
    raw = dict(raw)
    out: dict[str, Any] = {}
    names: dict[str, str] = {}
    unused = [k for k in SPEED_ONLY | NO_EFFECT if raw.pop(k, None) is not None]
    for key, (default, why) in REFUSED.items():
        if "." not in key and raw.get(key, default) != default:
            raise UserError(f"{source}: key '{key}': {raw[key]!r}: {why}")
        raw.pop(key, None)

    def put(v0: str, v1: str, value: Any) -> None:
        out[v0], names[v0] = value, v1

    if "model" in raw:
        put("model_name_or_path", "model", raw.pop("model"))
    if "train_dataset" in raw:
        put("train_dataset", "train_dataset", _near(raw.pop("train_dataset"), source))
    for key in SAME_NAME:
        if key in raw:
            put(key, key, raw.pop(key))
    for key, value in V1_DEFAULTS.items():
        out.setdefault(key, value)
    _model_class(raw.pop("model_class", "llm"), source)
    _batch(raw, out, put, source)
    _peft(_section(raw.pop("peft_config", None), "peft_config", source), out, put, unused, source)
    _quant(_section(raw.pop("quant_config", None), "quant_config", source), put, source)
    if (checkpointing := raw.pop("enable_activation_checkpointing", None)) is not None:
        put("gradient_checkpointing", "enable_activation_checkpointing", bool(checkpointing))
    if (scheduler := _section(raw.pop("lr_scheduler_config", None), "lr_scheduler_config", source)) is not None:
        put("lr_scheduler_type", "lr_scheduler_config.name", scheduler["name"])
    _renamed_values(raw, put, source)
    if raw.get("eval_dataset") is not None:
        raise UserError(
            f"{source}: eval_dataset: peftflow holds out val_size rows of train_dataset for evaluation; "
            "drop eval_dataset and set val_size"
        )
    raw.pop("eval_dataset", None)
    if "max_new_tokens" in raw:  # v1's sampling budget: peftflow's held-out generation
        evaluation = dict(raw.pop("evaluation", None) or {})
        evaluation.setdefault("max_new_tokens", raw.pop("max_new_tokens"))
        put("evaluation", "max_new_tokens", evaluation)
    if out.get("max_steps") is None:
        out.pop("max_steps", None)
    if "train_dataset" not in out:
        raise UserError(f"{source}: train_dataset is missing (a v1 dataset YAML, or a local data file or folder)")
    for key in list(raw):
        if key in out:
            raise UserError(f"{source}: unknown key '{key}'")
        out[key] = raw.pop(key)
    return out, names, unused


def _renamed_values(raw: dict, put, source: str) -> None:
    """v1 keys whose values v0 spells differently: flash_attn, resume_from_checkpoint, sample_backend."""
    if "flash_attn" in raw:
        value = raw.pop("flash_attn")
        if value not in FLASH_ATTN:
            raise UserError(f"{source}: key 'flash_attn': {value!r}: one of {', '.join(FLASH_ATTN)}")
        put("flash_attn", "flash_attn", FLASH_ATTN[value])
    if raw.get("resume_from_checkpoint") is not None:  # a checkpoint dir, or auto: the latest (v0's true)
        value = raw.pop("resume_from_checkpoint")
        put("resume_from_checkpoint", "resume_from_checkpoint", True if value == "auto" else value)
    if raw.get("sample_backend") is not None:
        if raw["sample_backend"] != "hf":
            raise UserError(
                f"{source}: key 'sample_backend': {raw['sample_backend']!r}: held-out answers are generated "
                "with transformers (hf); serve the registered model with vLLM instead"
            )
        raw.pop("sample_backend")  # hf: what peftflow's evaluation generates with


def _near(path: Any, source: str) -> Any:
    """A relative train_dataset is read from the working directory, as LLaMA-Factory does, else
    next to the config file."""
    if not isinstance(path, str) or Path(path).is_absolute() or Path(path).exists():
        return path
    beside = Path(source).parent / path
    return str(beside) if beside.exists() else path


def _section(value: Any, key: str, source: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise UserError(f"{source}: {key} must be a mapping with a 'name' (got {value!r})")
    return value


def _model_class(value: Any, source: str) -> None:
    if value != "llm":
        raise UserError(
            f"{source}: model_class: {value}: peftflow fine-tunes causal language models (model_class: llm)"
        )


def _batch(raw: dict, out: dict, put, source: str) -> None:
    if "micro_batch_size" in raw:
        put("per_device_train_batch_size", "micro_batch_size", raw.pop("micro_batch_size"))
    total = raw.pop("global_batch_size", None)
    if total is not None:
        micro = out["per_device_train_batch_size"]
        if not isinstance(total, int) or not isinstance(micro, int) or micro <= 0 or total % micro:
            raise UserError(
                f"{source}: global_batch_size {total!r} is not a multiple of micro_batch_size {micro!r} "
                "(one process: global = micro x gradient accumulation)"
            )
        put("gradient_accumulation_steps", "global_batch_size", total // micro)


def _peft(peft: dict | None, out: dict, put, unused: list[str], source: str) -> None:
    if peft is None:  # v1 without a peft_config trains every weight
        put("finetuning_type", "peft_config", "full")
        return
    if peft["name"] != "lora":
        raise UserError(
            f"{source}: peft_config.name: {peft['name']}: peftflow trains LoRA (name: lora) or, without "
            "peft_config, the full model"
        )
    put("finetuning_type", "peft_config.name", "lora")
    for key, value in peft.items():
        if key == "name":
            continue
        if f"peft_config.{key}" in REFUSED and value is not None:
            raise UserError(f"{source}: key 'peft_config.{key}': {value!r}: {REFUSED[f'peft_config.{key}'][1]}")
        if key in EXPORT_KEYS:
            if value is not None:  # adapter_name_or_path set was refused above
                unused.append(f"peft_config.{key}")
        elif key in LORA_KEYS:
            put(LORA_KEYS[key][0], f"peft_config.{key}", value)
        else:
            match = (
                [PEFT_SYNONYMS[key]]
                if key in PEFT_SYNONYMS
                else difflib.get_close_matches(key, [*LORA_KEYS, *EXPORT_KEYS], n=1)
            )
            raise UserError(
                f"{source}: unknown key 'peft_config.{key}'" + (f" (did you mean '{match[0]}'?)" if match else "")
            )
    for key, (v0, default) in LORA_KEYS.items():
        if default is not None:
            out.setdefault(v0, default)


def _quant(quant: dict | None, put, source: str) -> None:
    if quant is None:
        return
    if quant["name"] not in ("bnb", "auto"):
        raise UserError(
            f"{source}: quant_config.name: {quant['name']}: peftflow quantizes with bitsandbytes (bnb or auto)"
        )
    unknown = sorted(set(quant) - {"name", "quantization_bit"})
    if unknown:
        raise UserError(f"{source}: unknown key 'quant_config.{unknown[0]}' (known: name, quantization_bit)")
    put("quantization_bit", "quant_config.quantization_bit", quant.get("quantization_bit", 4))  # bnb's default
