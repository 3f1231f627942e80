"""The run config as JSON (what Prefect stores as the deployment's default and the dashboard's
Custom run form shows and submits): the basic recipe at the top, the other keys in groups.

YAML stays LLaMA-Factory's flat keys; inside a group a key keeps its flat name, so the two shapes
differ only by the group level: `{"lora": {"lora_rank": 16}}` is `lora_rank: 16`. RunConfig accepts
both (`flatten`, before validation) and writes the grouped one for JSON (`group`), so a config
survives the dashboard's round trip exactly. Python dumps, the train key and the fingerprint use
the flat shape.

Optional fields are plain inputs in the form: their JSON schema drops the `null` branch (which the
dashboard renders as an int/None switch), and the JSON leaves a field out while it is empty.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable

from peftflow.stages import STAGES

# The flat shape, for code that hashes or logs a config: `cfg.model_dump(mode="json", context=FLAT)`.
FLAT = {"flat": True}


def _stage_groups() -> dict[str, tuple[str, str, tuple[str, ...]]]:
    """One group per stage's form group; stages that share a group (dpo and kto: Preference) show
    their keys in it once, in the order the stages declare them."""
    groups: dict[str, tuple[str, str, tuple[str, ...]]] = {}
    for s in STAGES.values():
        if s.form_group:
            _, _, keys = groups.get(s.form_group.key, ("", "", ()))
            more = tuple(k for k in s.options if k not in keys)
            groups[s.form_group.key] = (s.form_group.title, s.form_group.description, keys + more)
    return groups


# group key -> (title, description, keys); the order is the form's. Keys in no group stay at the top.
GROUPS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "lora": (
        "LoRA",
        "Method lora (IA3 reads the target modules).",
        (
            "lora_rank",
            "lora_alpha",
            "lora_dropout",
            "lora_target",
            "additional_target",
            "use_dora",
            "use_rslora",
            "lora_init",
            "pissa_init",
            "moe_aux_loss_coef",
        ),
    ),
    "training": (
        "Training",
        "Schedule, optimizer, precision, checkpoints, output folder, run store, evaluation during training.",
        (
            "lr_scheduler_type",
            "lr_scheduler_kwargs",
            "warmup_ratio",
            "warmup_steps",
            "weight_decay",
            "max_grad_norm",
            "optim",
            "seed",
            "logging_steps",
            "save_steps",
            "save_total_limit",
            "bf16",
            "fp16",
            "bf16_autocast",
            "gradient_checkpointing",
            "output_dir",
            "storage",
            "eval_strategy",
            "eval_steps",
            "per_device_eval_batch_size",
            "metric_for_best_model",
            "greater_is_better",
            "load_best_model_at_end",
            "early_stopping_steps",
            "save_strategy",
            "save_only_model",
            "resume_from_checkpoint",
        ),
    ),
    "data": (
        "Data",
        "Which rows are read and which tokens are learned.",
        (
            "max_samples",
            "train_dataset",
            "train_on_prompt",
            "mask_history",
            "enable_thinking",
            "preserve_thinking",
            "tool_format",
            "default_system",
            "on_invalid_rows",
            "mix_strategy",
            "interleave_probs",
            "packing",
            "neat_packing",
            "streaming",
            "buffer_size",
        ),
    ),
    "merging": (
        "Merge",
        "Whether the adapter is folded into its base, and the logit check.",
        ("merge", "merge_tolerance", "quantized_merge_tolerance"),
    ),
    "prompt_learning": (
        "Prompt methods",
        "Methods prefix, prompt and ptuning.",
        (
            "num_virtual_tokens",
            "prefix_projection",
            "prompt_tuning_init",
            "prompt_tuning_init_text",
            "encoder_reparameterization_type",
            "encoder_hidden_size",
        ),
    ),
    "quantization": (
        "Quantization",
        "A 4- or 8-bit base (QLoRA).",
        ("quantization_bit", "quantization_method", "quantization_type", "double_quantization", "compute_dtype"),
    ),
    "vision": (
        "Vision-language",
        "LLaVA-style models; ignored for text-only ones.",
        ("freeze_vision_tower", "train_projector", "freeze_multi_modal_projector"),
    ),
    # each stage's own options (peftflow/stages/), as the stage declares them
    **_stage_groups(),
    "preparation": (
        "Data preparation",
        "How the rows are tokenised, and a saved copy to reuse.",
        ("preprocessing_num_workers", "preprocessing_batch_size", "tokenized_path"),
    ),
    "distributed": (
        "Distributed",
        "torchrun for the train step when either is > 1.",
        ("num_processes", "nnodes", "ddp_timeout"),
    ),
    "trust": (
        "Model",
        "What the base model may run or load, and how it loads.",
        (
            "trust_remote_code",
            "allow_pickle_weights",
            "rope_scaling",
            "upcast_layernorm",
            "flash_attn",
            "enable_liger_kernel",
        ),
    ),
}
GROUP_OF = {key: g for g, (_, _, keys) in GROUPS.items() for key in keys}
# Where the form shows the recipe's sections (registry, evaluation, promotion): after these groups.
SECTIONS_AFTER = "data"
# None written as a value where None is not the default (and so cannot be left out); read back by RunConfig.
NONE_AS = {"save_total_limit": 0}


def flatten(raw: Any) -> Any:
    """A grouped mapping (the form's JSON) -> the flat one; a flat mapping passes unchanged."""
    if not isinstance(raw, dict) or not GROUPS.keys() & raw.keys():
        return raw
    out = {k: v for k, v in raw.items() if k not in GROUPS or not isinstance(v, dict)}
    for g in GROUPS.keys() & raw.keys():
        if not isinstance(raw[g], dict):
            continue
        keys = GROUPS[g][2]
        for k, v in raw[g].items():
            if k not in keys:
                match = difflib.get_close_matches(k, keys, n=1, cutoff=0.6)
                hint = f" (did you mean '{g}.{match[0]}'?)" if match else ""
                raise ValueError(f"unknown key '{g}.{k}'{hint}")
            if k in out:
                raise ValueError(f"key '{k}' given twice: at the top and in '{g}'")
            out[k] = v
    return out


def group(flat: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The flat JSON dump -> the grouped one: the recipe's keys all written; in a group or a section
    only the keys that differ from `defaults` (dotted for a section's), as a YAML recipe is written,
    so the form shows a group at its defaults folded (`{}`, see grouped_schema)."""
    flat = flat | {k: v for k, v in NONE_AS.items() if k in flat and flat[k] is None}
    out: dict[str, Any] = {}
    sections = [k for k, v in flat.items() if isinstance(v, dict) and k not in GROUP_OF]  # a mapping key is no section
    for k, v in flat.items():
        if k in sections:
            out[k] = {s: x for s, x in v.items() if f"{k}.{s}" not in defaults or x != defaults[f"{k}.{s}"]}
        elif k not in GROUP_OF:
            out[k] = v
    grouped = {k: out.pop(k) for k in sections}  # in the form's order: see grouped_schema
    for g, (_, _, keys) in GROUPS.items():
        out[g] = {k: flat[k] for k in keys if k in flat and (k not in defaults or flat[k] != defaults[k])}
        if g == SECTIONS_AFTER:
            out |= grouped
    return out


def plain_optionals(schema: dict[str, Any]) -> None:
    """In place, on one model's JSON schema: an optional field is its non-null type (a plain input),
    a field defaulting to None has no default (the form leaves it empty), and a bool-or-None is a
    choice of true / false (an unchecked box would read as false)."""
    for prop in schema.get("properties", {}).values():
        branches = prop.get("anyOf", [])
        if {"type": "null"} not in branches:
            continue
        rest = [b for b in branches if b != {"type": "null"}]
        del prop["anyOf"]
        if len(rest) == 1:
            prop.update(rest[0])
        else:
            prop["anyOf"] = rest
        if prop.get("type") == "boolean":  # a select with an empty choice; the form draws a typed bool as a switch
            del prop["type"]
            prop["enum"] = [True, False]
        if "default" in prop and prop["default"] is None:
            del prop["default"]


def grouped_schema(schema: dict[str, Any], resolve: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """In place, on RunConfig's JSON schema: the recipe's keys at the top, then one object per group
    and section, each a choice of `Defaults` (nothing to fill in: the dashboard draws an object
    with no fields as nothing, so the form stays short) or `Custom` (its fields, titled without the
    group's prefix: the group's card says it). The form picks the tab by the value: `{}` Defaults,
    a group with keys Custom. `resolve`: a section's `$ref` -> its schema, copied in (the form
    titles a `$ref` branch by its definition's name)."""
    props = schema["properties"]
    top = {k: p for k, p in props.items() if k not in GROUP_OF}
    sections = [k for k, p in top.items() if "$ref" in p or "allOf" in p]
    out = {k: p for k, p in top.items() if k not in sections}
    for g, (title, description, keys) in GROUPS.items():
        fields = {
            "type": "object",
            "additionalProperties": False,
            "properties": {k: _unprefixed(props[k], title) for k in keys},
        }
        out[g] = _foldable(title, description, fields)
        if g == SECTIONS_AFTER:
            for k in sections:
                section = dict(resolve({"$ref": top[k]["$ref"]}))
                description = top[k].get("description") or section.pop("description", "")
                out[k] = _foldable(top[k].get("title", k), description, section)
    schema["properties"] = out


def _foldable(title: str, description: str, fields: dict[str, Any]) -> dict[str, Any]:
    defaults = {"title": "Defaults", "type": "object", "properties": {}, "additionalProperties": False}
    return {"title": title, "description": description, "anyOf": [defaults, {**fields, "title": "Custom"}]}


def unprefix_titles(schema: dict[str, Any], title: str) -> None:
    """In place: a section's field titles without the section's own prefix ("Registry: ...")."""
    schema["properties"] = {k: _unprefixed(p, title) for k, p in schema.get("properties", {}).items()}


_NAMES = ("lm-eval",)  # written lower-case as their projects write them


def _unprefixed(prop: dict[str, Any], group_title: str) -> dict[str, Any]:
    head, sep, rest = prop.get("title", "").partition(": ")
    if sep and head == group_title:
        first = rest.split(" ", 1)[0]  # "rank" -> "Rank", "warm-up ratio" -> "Warm-up ratio"; names keep their case
        keep = not first.islower() or first in _NAMES
        return {**prop, "title": rest if keep else rest[:1].upper() + rest[1:]}
    return prop
