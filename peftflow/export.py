"""`peftflow export CONFIG`: LLaMA-Factory's export YAML (`llamafactory-cli export`), v0 or v1, unchanged.

v0 keys: model_name_or_path, adapter_name_or_path, template, trust_remote_code, export_dir,
export_size (GB per shard), export_device, export_legacy_format, infer_dtype. v1 keys: model,
template, peft_config: {name: lora, adapter_name_or_path, export_dir, export_size, infer_dtype,
export_legacy_format}. The adapter is a local dir or a registered `models:/` adapter version;
`--model models:/NAME@ALIAS` exports a registered version instead of the file's model.

The adapter is merged into the unquantized base with merge.py's fidelity check (logits of the
merge vs the adapter model); a quantized merge is refused, as LLaMA-Factory's examples warn. The
export holds safetensors shards of at most export_size GB, the tokenizer (with the template's
eos and, where LLaMA-Factory writes it, its chat template) and a generation config that stops on
the template's stop tokens. It is written beside export_dir and moved into place when complete.
"""

from __future__ import annotations

import difflib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftflow.config.v1 import EXPORT_KEYS, LORA_KEYS, is_v1
from peftflow.errors import UserError

V0_KEYS = (
    "model_name_or_path",
    "adapter_name_or_path",
    "template",
    "trust_remote_code",
    "finetuning_type",
    "export_dir",
    "export_size",
    "export_device",
    "export_legacy_format",
    "infer_dtype",
    "quantization_bit",
    "quantization_method",
    "export_quantization_bit",
    "export_quantization_dataset",
    "export_hub_model_id",
    "merge_tolerance",
    "default_system",
)
V1_KEYS = (
    "model",
    "model_class",
    "template",
    "trust_remote_code",
    "peft_config",
    "quant_config",
    "kernel_config",
    "dist_config",
    "merge_tolerance",
)
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ExportSpec:
    model: str  # model reference (builtin:, local dir, hub id, models:/)
    adapter: str | None  # local dir or models:/ adapter version
    export_dir: str
    export_size_gb: float = 5.0
    template: str | None = None
    trust_remote_code: bool = False
    infer_dtype: str = "auto"
    merge_tolerance: float = 1e-3
    schema: str = "v0"


@dataclass(frozen=True)
class ExportResult:
    export_dir: str
    shards: int
    merged: bool  # an adapter was merged in
    max_abs_logit_diff: float | None  # merge vs adapter model, when merged
    dtype: str


def read_spec(raw: Any, source: str) -> ExportSpec:
    """The export settings of a v0 or v1 export YAML (read_yaml's result)."""
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping of keys to values, got {type(raw).__name__}")
    return _v1_spec(raw, source) if is_v1(raw) else _v0_spec(raw, source)


def _unknown(raw: dict, known: tuple[str, ...], source: str, prefix: str = "") -> None:
    for key in raw:
        if key not in known:
            match = difflib.get_close_matches(key, known, n=1)
            raise UserError(
                f"{source}: unknown key '{prefix}{key}'" + (f" (did you mean '{match[0]}'?)" if match else "")
            )


def _common_refusals(raw: dict, source: str) -> None:
    if raw.get("export_quantization_bit"):
        raise UserError(f"{source}: export_quantization_bit: peftflow exports unquantized safetensors (no GPTQ export)")
    if raw.get("export_legacy_format"):
        raise UserError(f"{source}: export_legacy_format: true writes pickle weights; peftflow writes safetensors only")
    if raw.get("export_hub_model_id"):
        raise UserError(
            f"{source}: export_hub_model_id: the hub is not reachable; export to export_dir and upload it yourself"
        )
    if raw.get("infer_dtype", "auto") not in DTYPES:
        raise UserError(f"{source}: infer_dtype: {raw['infer_dtype']!r} is not one of {', '.join(DTYPES)}")
    size = raw.get("export_size", 5)
    if isinstance(size, bool) or not isinstance(size, (int, float)) or size <= 0:
        raise UserError(f"{source}: export_size must be a positive number of GB per shard (got {size!r})")


def _v0_spec(raw: dict, source: str) -> ExportSpec:
    _unknown(raw, V0_KEYS, source)
    if raw.get("quantization_bit"):
        raise UserError(
            f"{source}: quantization_bit: never merge an adapter into a quantized model (LLaMA-Factory's "
            "examples warn the same); drop quantization_bit, the merge goes into the unquantized base"
        )
    _common_refusals(raw, source)
    return _spec(raw, raw.get("model_name_or_path"), raw.get("adapter_name_or_path"), raw, "v0", source)


def _v1_spec(raw: dict, source: str) -> ExportSpec:
    _unknown(raw, V1_KEYS, source)
    if raw.get("quant_config"):
        raise UserError(
            f"{source}: quant_config: never merge an adapter into a quantized model; drop quant_config, "
            "the merge goes into the unquantized base"
        )
    peft = raw.get("peft_config") or {}
    if not isinstance(peft, dict) or peft.get("name") != "lora":
        raise UserError(f"{source}: peft_config must have name: lora (LLaMA-Factory v1 merges LoRA adapters only)")
    _unknown(peft, ("name", *EXPORT_KEYS, *LORA_KEYS), source, "peft_config.")
    _common_refusals(peft, source)
    return _spec(peft, raw.get("model"), peft.get("adapter_name_or_path"), raw, "v1", source)


def _spec(export: dict, model: Any, adapter: Any, raw: dict, schema: str, source: str) -> ExportSpec:
    model_key = "model" if schema == "v1" else "model_name_or_path"
    if not isinstance(model, str) or not model:
        raise UserError(f"{source}: {model_key} is missing")
    if isinstance(adapter, list) or (isinstance(adapter, str) and "," in adapter):
        raise UserError(f"{source}: adapter_name_or_path: peftflow merges one adapter per export")
    if not export.get("export_dir"):
        raise UserError(f"{source}: export_dir is missing")
    return ExportSpec(
        model,
        adapter,
        str(export["export_dir"]),
        float(export.get("export_size", 5)),
        raw.get("template"),
        bool(raw.get("trust_remote_code", False)),
        export.get("infer_dtype", "auto"),
        float(raw.get("merge_tolerance", 1e-3)),
        schema,
    )


def run_export(spec: ExportSpec, registered: str | None = None) -> ExportResult:
    """Merge (when there is an adapter) and write the export; `registered` (models:/...) replaces
    the spec's model and adapter with a registered version."""
    base, adapter = _inputs(spec, registered)
    target = Path(spec.export_dir).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        merged, diff = base, None
        if adapter is not None:
            merged, diff = _merge(base, adapter, tmp / "merged", spec)
        dtype = _write_model(merged, tmp / "export", spec)
        _write_tokenizer(
            adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else base, tmp / "export", spec
        )
        shutil.rmtree(target, ignore_errors=True)
        (tmp / "export").replace(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shards = len(list(target.glob("*.safetensors")))
    return ExportResult(str(target), shards, adapter is not None, diff, dtype)


def _inputs(spec: ExportSpec, registered: str | None) -> tuple[str, str | None]:
    """(base model dir, adapter dir or None)."""
    from peftflow.models.resolve import resolve_model

    if registered:
        version = _download(registered, "--model")
        if not (Path(version) / "adapter_config.json").is_file():
            return version, None  # a merged version: exported as it is, resharded
        return _recorded_base(version, registered), version
    base = resolve_model(spec.model, key="model" if spec.schema == "v1" else "model_name_or_path").path
    if spec.adapter is None:
        return base, None
    adapter = (
        _download(spec.adapter, "adapter_name_or_path")
        if spec.adapter.startswith("models:/")
        else str(Path(spec.adapter).expanduser())
    )
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise UserError(f"adapter_name_or_path: {spec.adapter}: not an adapter (no adapter_config.json)")
    return base, adapter


def _download(uri: str, key: str) -> str:
    from peftflow.mlflow_io.downloads import download_model_dir

    try:
        return download_model_dir(uri)
    except LookupError as e:
        raise UserError(f"{key} {uri}: {e}") from None


def _recorded_base(adapter: str, uri: str) -> str:
    from peft import PeftConfig

    base = PeftConfig.from_pretrained(adapter).base_model_name_or_path
    if not base or not Path(base).is_dir():
        raise UserError(
            f"--model {uri} is an adapter version whose base {base!r} is not on this machine; "
            "export with the config's model_name_or_path and adapter_name_or_path instead"
        )
    return base


def _merge(base: str, adapter: str, out: Path, spec: ExportSpec) -> tuple[str, float]:
    from peftflow import merge

    try:
        result = merge.merge(base, adapter, out, spec.merge_tolerance, trust_remote_code=spec.trust_remote_code)
    except merge.MergeFidelityError as e:
        raise UserError(f"export refused: {e}") from None
    return result.merged_dir, result.max_abs_logit_diff


def _write_model(model_dir: str, out: Path, spec: ExportSpec) -> str:
    """Sharded safetensors in the export dtype: infer_dtype, where auto keeps the checkpoint's own
    dtype (float32 stays float32 on a CPU, as LLaMA-Factory's auto does without a bf16 GPU)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from peftflow.models import vision

    if vision.is_vision_language(model_dir):
        raise UserError(
            f"{model_dir}: export of vision-language models is not supported; the flow publishes them merged"
        )
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=spec.trust_remote_code)
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    dtype = (
        getattr(torch, spec.infer_dtype)
        if spec.infer_dtype != "auto"
        else (getattr(torch, stored) if isinstance(stored, str) else stored)
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, trust_remote_code=spec.trust_remote_code)
    model.save_pretrained(out, max_shard_size=int(spec.export_size_gb * 10**9))
    generation = (
        model.generation_config if model.generation_config is not None else GenerationConfig.from_model_config(config)
    )
    generation.save_pretrained(out)
    return str(dtype).removeprefix("torch.")


def _write_tokenizer(tokenizer_dir: str, out: Path, spec: ExportSpec) -> None:
    """The tokenizer as LLaMA-Factory's export leaves it (left padding; a table template's eos and,
    where it replaces the chat template or the tokenizer has none, its Jinja), and generation
    stopping on the template's stop tokens."""
    from transformers import AutoTokenizer, GenerationConfig

    from peftflow.data.templates import TOKENIZER, chat_template_jinja, get_template, stop_token_ids

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=spec.trust_remote_code)
    name = spec.template or TOKENIZER
    row = get_template(name)
    stops = stop_token_ids(tokenizer, name)
    if row is not None:
        if row.replace_eos:
            tokenizer.eos_token = row.stop_words[0]
        if tokenizer.chat_template is None or row.replace_jinja:
            tokenizer.chat_template = chat_template_jinja(row, tokenizer)
    tokenizer.padding_side = tokenizer.init_kwargs["padding_side"] = "left"  # the attribute alone is not saved
    tokenizer.save_pretrained(out)
    generation = GenerationConfig.from_pretrained(out)
    generation.eos_token_id = stops if len(stops) > 1 else stops[0]
    generation.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    generation.save_pretrained(out)
