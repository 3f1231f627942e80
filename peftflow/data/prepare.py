"""Dataset preparation: LLaMA-Factory datasets in, tokenised Arrow train / eval splits out.

prepare_dataset() reads the datasets the config names, validates and normalises every row into an
Arrow table (reading.py), picks each dataset's rows and mixes them, tokenises with the chat template,
masks the prompt and cuts at cutoff_len with `datasets.map` (encoding.py), and splits off the eval
rows. Plain text (`stage: pt`) is concatenated and cut into cutoff_len blocks instead (blocks.py).
Rows stay on disk throughout (scratch Arrow files, removed after), so memory does not grow with the
row count.
The result is cached under cache_dir("prepared")/<fingerprint>, where the fingerprint
covers everything that changes the output (data bytes, dataset_info entries, tokenizer files,
template and data options), so an unchanged input is never tokenised twice.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from peftflow.config import RunConfig
from peftflow.data.blocks import text_blocks
from peftflow.data.encoding import BOOKKEEPING, CUTOFF_DROP, IMAGE_CUT_DROP, EncodeRows, encode_rows
from peftflow.data.fingerprint import data_fingerprint
from peftflow.data.formats import Conversation
from peftflow.data.mixing import mix
from peftflow.data.packing import Packed, knapsack, packed_rows, packs_rows
from peftflow.data.reading import ReadRows, conversations, read_valid_rows, write_table
from peftflow.data.report import DataProblems, DataReport, percentiles
from peftflow.data.row_kinds import read_as
from peftflow.data.sources import DatasetSource, resolve_datasets
from peftflow.data.streaming import HELD_OUT_COLUMNS, held_out_rows
from peftflow.data.tokenized import holds_this_data, save_copy
from peftflow.data.v1 import resample, v1_sources
from peftflow.errors import UserError
from peftflow.models.vision import check_config_fits
from peftflow.paths import cache_dir
from peftflow.stages import get_stage
from peftflow.store import build_sealed

log = logging.getLogger("peftflow.data")

STATS_FILE = "stats.json"
REPORT_FILE = "report.json"  # the DataReport of what was prepared (`peftflow validate` prints it)
SHOWN_ROWS = 5  # invalid rows named in a message


@dataclass(frozen=True)
class PreparedData:
    path: str  # directory holding train/ and eval/ (datasets.Dataset.save_to_disk) and stats.json
    fingerprint: str  # content fingerprint of everything that shapes the output
    train_rows: int
    eval_rows: int
    dropped: int  # invalid rows dropped + rows with nothing supervised left after cutoff
    truncated: int  # kept rows cut at cutoff_len


@dataclass
class _Analysis:
    table: object = None  # datasets.Dataset: the encoded rows (encoding.py's columns), or the blocks
    kept: list[int] = field(default_factory=list)  # rows of `table` kept, in order
    columns: list[str] = field(default_factory=list)  # what each kept row carries beyond ids and labels
    rows_read: int = 0
    drops: list[tuple[str, str]] = field(default_factory=list)  # (reason, "<file> row N")
    lengths: list[int] = field(default_factory=list)  # tokens per valid row, before cutoff
    truncated: int = 0
    supervised: int = 0  # learned tokens of the kept rows
    problems: list[str] = field(default_factory=list)
    documents: int | None = None  # plain text: the documents concatenated into `table`'s cutoff_len blocks
    tail_tokens: int = 0  # plain text: tokens after the last whole block, dropped
    packed: Packed | None = None  # packing: what the training split's rows were packed into
    bins: list[list[int]] = field(default_factory=list)  # packing: the training rows of each packed sequence
    mixed: dict | None = None  # interleaved datasets: the strategy and the rows drawn from each


def dataset_sources(cfg: RunConfig) -> list[DatasetSource]:
    """The datasets a run reads (v1's train_dataset when set, else `dataset` in dataset_dir), read
    as rows of its stage's kind."""
    sources = (
        v1_sources(cfg.train_dataset) if cfg.train_dataset else resolve_datasets(cfg.dataset_dir, cfg.dataset_names)
    )
    return read_as(get_stage(cfg).row_kind, sources, f"stage: {cfg.stage}")


def prepare_dataset(cfg: RunConfig, model_path: str) -> PreparedData:
    check_config_fits(cfg, model_path)  # prepared data does not depend on the method: checked before the cache
    sources = dataset_sources(cfg)
    fingerprint = data_fingerprint(cfg, sources, model_path)
    target = cache_dir("prepared") / fingerprint
    if cfg.tokenized_path and holds_this_data(cfg.tokenized_path, fingerprint, STATS_FILE):
        target = Path(cfg.tokenized_path).expanduser()
    elif (target / STATS_FILE).is_file():
        log.info("reusing prepared data at %s", target)
    else:
        # With a run store, another machine may have tokenised the same inputs already: fetched, checked.
        build_sealed(
            cfg.storage,
            f"cache/prepared/{fingerprint}",
            target,
            lambda out: _build(cfg, sources, model_path, out, fingerprint),
            ready=lambda t: (t / STATS_FILE).is_file(),
        )
        log.info("prepared data at %s", target)
    if cfg.tokenized_path and target != Path(cfg.tokenized_path).expanduser():
        save_copy(target, cfg.tokenized_path)
    stats = json.loads((target / STATS_FILE).read_text())
    return PreparedData(
        str(target), fingerprint, stats["train_rows"], stats["eval_rows"], stats["dropped"], stats["truncated"]
    )


def prepared_report(cfg: RunConfig, model_path: str, data: PreparedData) -> DataReport:
    """The report kept with prepared data; data prepared before reports were kept is read again."""
    kept = Path(data.path) / REPORT_FILE
    return DataReport.from_json(kept) if kept.is_file() else data_report(cfg, model_path)


def data_report(cfg: RunConfig, model_path: str) -> DataReport:
    """Every problem of the data, not only the first, and what it holds; nothing written."""
    check_config_fits(cfg, model_path)
    sources = dataset_sources(cfg)
    fingerprint = data_fingerprint(cfg, sources, model_path)
    with _scratch() as scratch:
        return _report(cfg, sources, _analyse(cfg, sources, model_path, fingerprint, scratch))


def _build(cfg: RunConfig, sources: list[DatasetSource], model_path: str, out: Path, fingerprint: str) -> None:
    """Analyse once for the report and the rows; data with a problem is refused, nothing written."""
    if cfg.streaming:
        return _write_held_out(cfg, sources, model_path, out, fingerprint)
    with _scratch() as scratch:
        a = _analyse(cfg, sources, model_path, fingerprint, scratch)
        report = _report(cfg, sources, a)
        if report.problems:
            raise DataProblems(report)
        _write(a, report, cfg, out, fingerprint, scratch)


def _write_held_out(cfg: RunConfig, sources: list[DatasetSource], model_path: str, out: Path, fingerprint: str):
    """streaming: only the held-out rows are prepared (eval/, named in stats.json), and the report is
    theirs; training reads the stream."""
    held = held_out_rows(cfg, sources, model_path)
    held.select_columns(HELD_OUT_COLUMNS).save_to_disk(str(out / "eval"), num_shards=1)
    truncated = sum(held["truncated"])
    stats = {"fingerprint": fingerprint, "datasets": cfg.dataset_names, "template": cfg.template, "streaming": True}
    stats |= {"cutoff_len": cfg.cutoff_len, "train_rows": 0, "eval_rows": len(held), "dropped": 0}
    stats |= {"truncated": truncated, "held_out": list(held["where"])}
    (out / STATS_FILE).write_text(json.dumps(stats, indent=2))
    lengths = percentiles(list(held["length"]))
    names, n = tuple(s.name for s in sources), len(held)
    report = DataReport(names, n, n, {}, {}, lengths, cfg.cutoff_len, truncated, (), streamed=True)
    (out / REPORT_FILE).write_text(json.dumps(asdict(report), indent=1))


@contextmanager
def _scratch() -> Iterator[Path]:
    """A directory for the Arrow files rows pass through, removed afterwards."""
    root = cache_dir("scratch")
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _report(cfg: RunConfig, sources: list[DatasetSource], a: _Analysis) -> DataReport:
    by_reason: dict[str, list[str]] = {}
    for reason, where in a.drops:
        by_reason.setdefault(reason, []).append(where)
    return DataReport(
        datasets=tuple(s.name for s in sources),
        rows_read=a.rows_read,
        rows_kept=len(a.kept) if a.documents is None else a.documents,
        dropped={r: len(w) for r, w in by_reason.items()},
        dropped_rows={r: tuple(w[:SHOWN_ROWS]) for r, w in by_reason.items()},
        token_lengths=percentiles(a.lengths),
        cutoff_len=cfg.cutoff_len,
        truncated=a.truncated,
        problems=tuple(a.problems),
        blocks=None if a.documents is None else len(a.kept),
        tail_tokens=a.tail_tokens,
        packed=None if a.packed is None else (a.packed.rows, a.packed.sequences, a.packed.fill(cfg.cutoff_len)),
        mixed=a.mixed,
    )


def _analyse(cfg: RunConfig, sources: list[DatasetSource], model_path: str, fingerprint: str, scratch: Path):
    """Read, validate, tokenise and cut; every problem is noted, in the order it is met."""
    a = _Analysis()
    read = read_valid_rows(sources, scratch)
    a.rows_read, a.drops = read.rows_read, list(read.drops)
    order, a.mixed = _selected_rows(cfg, sources, read, a.problems.append)
    table = read.table.select(order)
    if any(s.format.text for s in sources):
        _cut_blocks(cfg, model_path, table, a, fingerprint, scratch)
    else:
        _encode_rows(cfg, model_path, table, read, a, any(s.format.feedback for s in sources), fingerprint)
    unit = "rows" if a.documents is None else "blocks"
    if a.kept and _eval_count(len(a.kept), cfg.val_size) >= len(a.kept):
        a.problems.append(
            f"val_size {cfg.val_size} holds out {_eval_count(len(a.kept), cfg.val_size)} of {len(a.kept)} {unit} "
            "and leaves none to train on; lower val_size or add data"
        )
    if packs_rows(cfg) and "images" in a.columns:
        a.problems.append("packing: rows with images are not packed (each row's image features follow its tokens)")
    elif packs_rows(cfg) and not a.problems:
        train = _rows(a, split_rows(len(a.kept), cfg)[0])
        lengths = [len(ids) for batch in train.select_columns(["input_ids"]).iter(1000) for ids in batch["input_ids"]]
        a.bins = knapsack(lengths, cfg.cutoff_len)
        a.packed = Packed(len(lengths), len(a.bins), sum(lengths))
    return a


def _cut_blocks(cfg: RunConfig, model_path: str, table, a: _Analysis, fingerprint: str, scratch: Path) -> None:
    """Plain text: every document, untemplated, concatenated and cut into cutoff_len blocks."""
    blocks = text_blocks(table, cfg, model_path, fingerprint, scratch)
    a.table, a.lengths, a.documents, a.tail_tokens = blocks.table, blocks.lengths, len(table), blocks.tail_tokens
    a.kept = list(range(len(blocks.table)))
    if len(table) and not a.kept:
        a.problems.append(
            f"cutoff_len {cfg.cutoff_len}: the texts hold {blocks.tail_tokens} tokens in all ({len(table)} rows), "
            "less than one block; lower cutoff_len or add text"
        )


def _encode_rows(cfg: RunConfig, model_path: str, table, read: ReadRows, a: _Analysis, feedback: bool, fingerprint):
    """Conversations and pairs: templated, masked and cut row by row (encoding.py); the rows left
    with nothing to learn are noted as drops, in order."""
    encode = EncodeRows(cfg, model_path, read.has_pairs, feedback, read.has_images)
    _check_model_takes_images(cfg, model_path, encode, read.has_images)
    if read.has_pairs and read.has_images:
        a.problems.append(f"dataset {cfg.dataset}: preference pairs with images are not supported")
    a.table = encode_rows(table, encode, cfg, fingerprint)
    images = False
    for start, batch in enumerate(a.table.select_columns(BOOKKEEPING).iter(batch_size=1000)):
        columns = (batch[name] for name in BOOKKEEPING)
        for i, (where, drop, length, truncated, learned, image_count) in enumerate(zip(*columns)):
            a.lengths.append(length)
            if drop:
                a.drops.append((drop, where))
                continue
            a.kept.append(start * 1000 + i)
            a.truncated += truncated
            a.supervised += learned
            images = images or image_count > 0
    a.columns = ["rejected_input_ids", "rejected_labels"] if read.has_pairs else []
    # multimodal data carries each row's image bytes
    a.columns += (["kto_tag"] if feedback else []) + (["images"] if images else [])
    if len(table) and not a.kept:
        a.problems.append(
            f"cutoff_len {cfg.cutoff_len}: every row's answer starts beyond it, so nothing is left to learn; "
            f"raise cutoff_len (rows have {min(a.lengths)} to {max(a.lengths)} tokens)"
        )
    cutoff_drops = sum(reason in (CUTOFF_DROP, IMAGE_CUT_DROP) for reason, _ in a.drops)
    if cutoff_drops and a.kept:
        log.warning("dropped %d rows with no answer token within cutoff_len %d", cutoff_drops, cfg.cutoff_len)


def _selected_rows(cfg: RunConfig, sources: list[DatasetSource], read: ReadRows, problem) -> tuple[list[int], dict]:
    """The rows of `read.table` a run uses, in order: every source's valid rows (invalid ones
    handled as on_invalid_rows says), v1 datasets resampled, at most max_samples per source, mixed."""
    per_dataset = []
    for source, rows, span in zip(sources, read.sources, read.ranges()):
        hint = rows.hint
        if hint:  # rows of another shape: what was looked for and the dataset_info.json entry that maps them
            hint = f"; dataset '{source.name}' in {source.info_file}: {hint}"
        if rows.invalid and cfg.on_invalid_rows == "error":
            problem(_invalid_rows_message(rows.invalid) + hint)
        elif rows.invalid:
            log.warning(
                "dataset '%s': dropped %d invalid rows: %s",
                source.name,
                len(rows.invalid),
                "; ".join(m for _, _, m in rows.invalid[:SHOWN_ROWS]),
            )
        if not rows.valid:
            # the hint once: with on_invalid_rows: error the invalid-rows problem above carries it
            problem(
                f"dataset '{source.name}': none of its {len(rows.invalid)} rows is valid"
                + (hint if cfg.on_invalid_rows != "error" else "")
            )
        valid = list(span)
        if valid and source.format.formatting.startswith("v1"):
            valid = resample(valid, source.entry, cfg.seed)
        per_dataset.append((source.name, valid[: cfg.max_samples]))
    return mix(per_dataset, cfg.mix_strategy, cfg.interleave_probs, cfg.seed)


def prompt_sources(cfg: RunConfig) -> list[DatasetSource]:
    """kd_unlabeled_dataset, read as prompts: rows need no answer, and a final one is dropped."""
    return read_as("prompts", resolve_datasets(cfg.dataset_dir, cfg.kd_unlabeled_names), "kd_unlabeled_dataset")


def read_prompts(cfg: RunConfig, sources: list[DatasetSource]) -> list[Conversation]:
    """Every valid prompt of `sources`, read as training rows are; text only."""

    def problem(message: str) -> None:
        raise UserError(message)

    with _scratch() as scratch:
        read = read_valid_rows(sources, scratch)
        order, _ = _selected_rows(cfg, sources, read, problem)
        if read.has_images:
            raise UserError(
                f"kd_unlabeled_dataset {cfg.kd_unlabeled_dataset}: prompts with images cannot be teacher-labelled"
            )
        return list(conversations(read.table, order))


def _check_model_takes_images(cfg: RunConfig, model_path: str, encode: EncodeRows, has_images: bool) -> None:
    if has_images and encode.encoder.image_token_id is None:
        raise UserError(
            f"dataset {cfg.dataset} has images but the model at {model_path} is not a vision-language model"
        )


def _invalid_rows_message(invalid: list[tuple[str, str, str]]) -> str:
    """One line about the first file with invalid rows: `<file>: N invalid rows: row 7: ...; ...`."""
    first_file = invalid[0][0]
    in_file = [m for f, _, m in invalid if f == first_file]
    elsewhere = len(invalid) - len(in_file)
    more = f"; and {elsewhere} in other files" if elsewhere else ""
    return (
        f"{first_file}: {len(in_file)} invalid rows: {'; '.join(in_file[:SHOWN_ROWS])}{more} "
        "(set on_invalid_rows: drop to skip them)"
    )


def _eval_count(n: int, val_size: float) -> int:
    """Rows held out: a fraction rounds up (as datasets' train_test_split), a whole number is a count."""
    return math.ceil(val_size * n) if val_size < 1 else int(val_size)


def split_rows(n: int, cfg: RunConfig) -> tuple[list[int], list[int]]:
    """(train, eval) row indices: a seeded shuffle, the first val_size rows held out."""
    n_eval = _eval_count(n, cfg.val_size)
    order = list(range(n))
    random.Random(cfg.seed).shuffle(order)
    return sorted(order[n_eval:]), sorted(order[:n_eval])


def _rows(a: _Analysis, positions: list[int]):
    """The kept rows at `positions` (indices into a.kept), as a view of a.table."""
    return a.table.select([a.kept[p] for p in positions])


def _write(a: _Analysis, report: DataReport, cfg: RunConfig, out: Path, fingerprint: str, scratch: Path) -> None:
    """Write train/, eval/, stats.json and the report into `out`."""
    from datasets import Features, List, Value

    train_idx, eval_idx = split_rows(len(a.kept), cfg)
    train = _rows(a, train_idx).select_columns(["input_ids", "labels", *a.columns])
    evaluation = _rows(a, eval_idx).select_columns(["input_ids", "labels", "prompt_ids", "reference", *a.columns])
    if a.packed:  # packed training rows: each sequence's position ids restart at every row
        ids = List(Value("int64"))
        train = write_table(
            packed_rows(_rows(a, train_idx), a.bins),
            Features({"input_ids": ids, "labels": ids, "position_ids": ids}),
            scratch / "packed.arrow",
        )
    stats = {
        "fingerprint": fingerprint,
        "datasets": cfg.dataset_names,
        "template": cfg.template,
        "cutoff_len": cfg.cutoff_len,
        "rows_read": a.rows_read,
        "train_rows": len(train_idx),
        "eval_rows": len(eval_idx),
        "dropped": len(a.drops),
        "dropped_by_reason": report.dropped,
        "truncated": a.truncated,
        "token_lengths": report.token_lengths,
        "supervised_tokens": a.supervised if a.documents is None else cfg.cutoff_len * len(a.kept),
        "packed_sequences": a.packed.sequences if a.packed else None,
    }
    train.save_to_disk(str(out / "train"))
    # one shard: an empty split saves no shard otherwise, and cannot be loaded
    evaluation.save_to_disk(str(out / "eval"), num_shards=1)
    (out / STATS_FILE).write_text(json.dumps(stats, indent=2))
    (out / REPORT_FILE).write_text(json.dumps(asdict(report), indent=1))
