"""Reading a run config: LLaMA-Factory YAML (v0 flat, or v1 by its shape) or a mapping, validated
into a RunConfig; keys LLaMA-Factory knows but peftflow does not use are reported, not dropped; the
first error is one line that names the key."""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from peftflow.config.run import RunConfig, demo_config
from peftflow.config.v1 import is_v1, to_v0
from peftflow.errors import UserError

log = logging.getLogger("peftflow.config")

# LLaMA-Factory / HF keys that are valid in a training YAML but change nothing in peftflow yet.
# They are reported in one warning line, never silently dropped.
ACCEPTED_UNUSED_KEYS = frozenset(
    {
        "do_train",
        "do_eval",
        "do_predict",
        "preprocessing_num_workers",
        "overwrite_cache",
        "overwrite_output_dir",
        "plot_loss",
        "ddp_timeout",
        "flash_attn",
        "dataloader_num_workers",
        "per_device_eval_batch_size",
        "eval_strategy",
        "eval_steps",
        "save_strategy",
        "save_only_model",
        "resume_from_checkpoint",
        "include_num_input_tokens_seen",
        "deepspeed",
        "enable_liger_kernel",
        "use_unsloth",
        "shift_attn",
        "rope_scaling",
        "upcast_layernorm",
        "tokenized_path",
        "streaming",
        "buffer_size",
        "mix_strategy",
        "interleave_probs",
        "image_max_pixels",
        "video_max_pixels",
        "export_dir",
        "export_size",
        "export_device",
        "export_legacy_format",
        "run_name",
        "hub_model_id",
        "push_to_hub",
        "logging_dir",
        "log_level",
        "report_to",
    }
)


# LLaMA-Factory keys that change what trains and that peftflow does not do: set, each is refused
# with its reason (null, as LLaMA-Factory's own YAMLs may write them, is not setting them).
REFUSED_KEYS = {
    "ref_model_adapters": "not supported: give the reference as one model in ref_model (a merged model dir or "
    "registered merged version)",
    "ref_model_quantization_bit": "not supported: the reference's log-probs are computed once, unquantised, and cached",
    "pref_bco_weight": "not supported: BCO's term is not trained; leave it 0",
    "ld_alpha": "not supported: LD-DPO's length weighting is not trained; leave it unset",
}


def _translate_keys(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """LLaMA-Factory keys whose meaning peftflow holds under its own name, moved there: a key of
    peftflow's written beside one of them wins over it."""
    raw = dict(raw)
    if raw.pop("disable_gradient_checkpointing", None):  # LLaMA-Factory checkpoints by default; this turns it off
        raw.setdefault("gradient_checkpointing", False)
    if (tokens := raw.pop("max_new_tokens", None)) is not None:  # its generation budget: the evaluation's here
        evaluation = raw.get("evaluation") if isinstance(raw.get("evaluation"), dict) else {}
        raw["evaluation"] = {"max_new_tokens": tokens, **evaluation}
    backend = raw.pop("infer_backend", None)
    if backend not in (None, "huggingface", "hf"):
        raise UserError(
            f"{source}: key 'infer_backend': {backend}: peftflow generates with transformers (huggingface); "
            "serve the registered version with vLLM instead (docs/serving.md)"
        )
    return raw


def _refuse_keys(raw: dict[str, Any], source: str) -> None:
    for key, reason in REFUSED_KEYS.items():
        if raw.get(key) not in (None, 0, 0.0):
            raise UserError(f"{source}: key '{key}': {reason}")


def _nearest(key: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _valid_keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


SCHEMA_V0, SCHEMA_V1 = "LLaMA-Factory v0 (flat training YAML)", "LLaMA-Factory v1 (USE_V1=1 sft YAML)"


def schema_of(raw: Any) -> str:
    return SCHEMA_V1 if isinstance(raw, dict) and is_v1(raw) else SCHEMA_V0


def parse_config(raw: dict[str, Any], source: str = "config") -> tuple[RunConfig, list[str]]:
    """Validate a raw mapping (v0, or v1 by its shape). Returns the config and the keys accepted but unused."""
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping of keys to values, got {type(raw).__name__}")
    raw, names, v1_unused = dict(raw), {}, []
    if "sweep" in raw:
        raise UserError(f"{source}: key 'sweep': a sweep section runs with `peftflow sweep {source}`, not as one run")
    if is_v1(raw):
        raw, names, v1_unused = to_v0(raw, source)
    _refuse_keys(raw, source)
    raw = _translate_keys(raw, source)
    raw = {k: v for k, v in raw.items() if k not in REFUSED_KEYS}
    unused = sorted(k for k in raw if k in ACCEPTED_UNUSED_KEYS)
    for k in unused:
        raw.pop(k)
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        raise UserError(_describe(e, source, names)) from None
    return cfg, v1_unused + unused


def _describe(e: ValidationError, source: str, names: dict[str, str] | None = None) -> str:
    """One line for the first error; `names` gives the key as the user wrote it (v1 names)."""
    err = e.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join([(names or {}).get(loc[0], loc[0]), *loc[1:]]) if loc else "(config)"
    if err["type"] == "extra_forbidden":
        section = RunConfig
        for part in loc[:-1]:
            section = section.model_fields[part].annotation  # nested section model
        return f"{source}: unknown key '{key}'{_nearest(loc[-1], _valid_keys(section))}"
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:
        return f"{source}: {msg}"
    return f"{source}: key '{key}': {msg} (got {err.get('input')!r})"


def load_config(path: str | os.PathLike | None) -> tuple[RunConfig, list[str]]:
    """Read a YAML run config (v0 or v1). `None` gives the built-in demo."""
    cfg, unused, _ = read_config(path)
    return cfg, unused


def read_config(path: str | os.PathLike | None) -> tuple[RunConfig, list[str], str]:
    """(config, keys accepted but unused, the schema the file was read as)."""
    if path is None:
        return demo_config(), [], "peftflow built-in demo"
    raw = read_yaml(path)
    return (*parse_config(raw, source=str(path)), schema_of(raw))


def read_yaml(path: str | os.PathLike) -> Any:
    """A YAML file's content; a missing, unreadable or invalid file is one line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: config file not found")
    try:
        loader = _DuplicateKeysLoader(p.read_text(encoding="utf-8"))
        try:
            raw = loader.get_single_data() or {}
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{p}:{where} invalid YAML: {getattr(e, 'problem', e)}") from None
    except UnicodeDecodeError:
        raise UserError(f"{p}: not UTF-8 text") from None
    for key, first, again in loader.duplicates:
        log.warning(
            "%s: key '%s' is given twice (lines %d and %d); the value on line %d is used, as LLaMA-Factory does",
            p,
            key,
            first,
            again,
            again,
        )
    return raw


class _DuplicateKeysLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, recording each key given twice in one mapping as (key, first line,
    repeated line): YAML forbids it, PyYAML (and so LLaMA-Factory's reader) keeps the last value."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates: list[tuple[str, int, int]] = []

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key_node, _ in node.value:
                # a merge key (<<: *defaults) brings keys a mapping may override; not a repeat
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    ident, line = (key_node.tag, key_node.value), key_node.start_mark.line + 1
                    if ident in first:
                        self.duplicates.append((key_node.value, first[ident], line))
                    first.setdefault(ident, line)
        return super().construct_mapping(node, deep=deep)
