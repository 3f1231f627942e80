"""The fingerprint prepared data is keyed by: everything that changes the rows prepare_dataset writes
(data bytes, dataset_info.json entries, tokenizer files, template and data options), so unchanged
inputs are never tokenised twice and a changed one never reuses stale rows."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from peftflow.config import RunConfig
from peftflow.data.images import images_digest
from peftflow.data.packing import packs_rows
from peftflow.data.slots import Options
from peftflow.data.sources import DatasetSource
from peftflow.data.templates import TOKENIZER_FINGERPRINT_NAME, get_template

PREPARE_VERSION = "1"  # bump when the output for the same inputs changes
PACKING_VERSION = "1"  # bump when packing's output for the same rows changes
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "processor_config.json",
    "preprocessor_config.json",
)
OPTIONS = ("cutoff_len", "max_samples", "val_size", "seed", "train_on_prompt", "mask_history", "on_invalid_rows")


def data_fingerprint(cfg: RunConfig, sources: list[DatasetSource], model_path: str) -> str:
    """What prepare_dataset keys its output by: data bytes, entries, tokenizer, template, options."""
    h = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        h.update(f"{label}\0{len(data)}\0".encode() + data)

    add("version", PREPARE_VERSION.encode())
    for source in sources:
        add("dataset", source.name.encode())
        add("entry", json.dumps(source.entry, sort_keys=True).encode())
        for file in source.files:
            add("file", file.path.read_bytes())
        if source.format.columns.get("images"):
            add("images", images_digest(source))
    if any(s.format.text for s in sources):  # the same files read as plain text prepare other rows
        add("row kind", b"text")
    for name in TOKENIZER_FILES:
        if (Path(model_path) / name).is_file():
            add(name, (Path(model_path) / name).read_bytes())
    add("template", _template_identity(cfg).encode())
    add("options", json.dumps({k: getattr(cfg, k) for k in OPTIONS}, sort_keys=True).encode())
    if cfg.mix_strategy != "concat":  # concat data keeps the key it had before mixing existed
        add("mixing", json.dumps([cfg.mix_strategy, cfg.interleave_probs]).encode())
    if cfg.streaming:  # the held-out rows are the stream's first val_size, not a seeded split's
        add("streaming", b"1")
    if packs_rows(cfg):  # packed training rows (plain or neat: the same rows); unpacked data keeps its key
        add("packing", PACKING_VERSION.encode())
    return h.hexdigest()[:16]


def encode_options(cfg: RunConfig) -> Options:
    return Options(
        cfg.train_on_prompt,
        cfg.mask_history,
        cfg.enable_thinking,
        cfg.preserve_thinking,
        cfg.tool_format,
        cfg.default_system,
    )


def _template_identity(cfg: RunConfig) -> str:
    """What of the template shapes the tokens: the table row and the options that change its output.
    The tokenizer template is named as it always was, so its prepared data keep their fingerprint."""
    row = get_template(cfg.template)
    if row is None:
        return f"{TOKENIZER_FINGERPRINT_NAME}\0"
    options = {k: getattr(cfg, k) for k in ("enable_thinking", "preserve_thinking", "tool_format", "default_system")}
    return f"{cfg.template}\0{row!r}\0{json.dumps(options, sort_keys=True)}"
