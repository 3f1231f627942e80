"""Dataset preparation: LLaMA-Factory datasets in, tokenised Arrow train / eval splits out.

prepare_dataset() reads the datasets the config names, validates and normalises every row,
tokenises with the chat template, masks the prompt, cuts at cutoff_len and splits off the eval
rows. Plain text (`stage: pt`) is concatenated and cut into cutoff_len blocks instead (blocks.py).
The result is cached under cache_dir("prepared")/<fingerprint>, where the fingerprint
covers everything that changes the output (data bytes, dataset_info entries, tokenizer files,
template and data options), so an unchanged input is never tokenised twice.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

from peftflow.config import RunConfig
from peftflow.data.blocks import text_blocks
from peftflow.data.fingerprint import data_fingerprint, encode_options
from peftflow.data.formats import Conversation, InvalidRow
from peftflow.data.images import read_images
from peftflow.data.mixing import mix
from peftflow.data.packing import Packed, pack, packs_rows
from peftflow.data.report import DataProblems, DataReport, percentiles
from peftflow.data.row_kinds import read_as
from peftflow.data.sources import DatasetSource, read_rows, resolve_datasets
from peftflow.data.tokenize import ChatEncoder, EncodedRow, cut, load_tokenizer, supervised
from peftflow.data.v1 import resample, v1_sources
from peftflow.errors import UserError
from peftflow.models.vision import check_config_fits
from peftflow.paths import cache_dir
from peftflow.stages import get_stage
from peftflow.store import build_sealed

log = logging.getLogger("peftflow.data")

STATS_FILE = "stats.json"
REPORT_FILE = "report.json"  # the DataReport of what was prepared (`peftflow validate` prints it)
CUTOFF_DROP = "no supervised tokens within cutoff_len"
IMAGE_CUT_DROP = "cutoff_len cuts through an image"
SHOWN_ROWS = 5  # invalid rows named in a message


@dataclass(frozen=True)
class PreparedData:
    path: str  # directory holding train/ and eval/ (datasets.Dataset.save_to_disk) and stats.json
    fingerprint: str  # content fingerprint of everything that shapes the output
    train_rows: int
    eval_rows: int
    dropped: int  # invalid rows dropped + rows with nothing supervised left after cutoff
    truncated: int  # kept rows cut at cutoff_len


class _Read(NamedTuple):
    """One valid row as read: its conversation (a pair's: the prompt and its chosen answer), or a
    plain-text row's document."""

    conversation: Conversation
    images: list[bytes]
    where: str  # "<file> row N"
    rejected: dict | None = None  # a preference pair's rejected answer turn
    kto_tag: bool | None = None  # KTO feedback: whether the answer is desirable
    text: str = ""  # plain text (stage pt): the document; its conversation is empty


@dataclass
class _Analysis:
    rows: list[EncodedRow] = field(default_factory=list)  # kept, cut at cutoff_len
    rejected: list[EncodedRow] = field(default_factory=list)  # preference pairs: each kept row's rejected side
    kto_tags: list[bool] = field(default_factory=list)  # KTO feedback: each kept row's tag
    images: list[list[bytes]] = field(default_factory=list)  # each kept row's images (empty for text)
    rows_read: int = 0
    drops: list[tuple[str, str]] = field(default_factory=list)  # (reason, "<file> row N")
    lengths: list[int] = field(default_factory=list)  # tokens per valid row, before cutoff
    truncated: int = 0
    problems: list[str] = field(default_factory=list)
    documents: int | None = None  # plain text: the documents concatenated into `rows`, cutoff_len blocks
    tail_tokens: int = 0  # plain text: tokens after the last whole block, dropped
    packed: Packed | None = None  # packing: the training split's rows packed into cutoff_len sequences
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
    if (target / STATS_FILE).is_file():
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
    return _report(cfg, sources, _analyse(cfg, sources, model_path))


def _build(cfg: RunConfig, sources: list[DatasetSource], model_path: str, out: Path, fingerprint: str) -> None:
    """Analyse once for the report and the rows; data with a problem is refused, nothing written."""
    a = _analyse(cfg, sources, model_path)
    report = _report(cfg, sources, a)
    if report.problems:
        raise DataProblems(report)
    _write(a, report, cfg, out, fingerprint)


def _report(cfg: RunConfig, sources: list[DatasetSource], a: _Analysis) -> DataReport:
    by_reason: dict[str, list[str]] = {}
    for reason, where in a.drops:
        by_reason.setdefault(reason, []).append(where)
    return DataReport(
        datasets=tuple(s.name for s in sources),
        rows_read=a.rows_read,
        rows_kept=len(a.rows) if a.documents is None else a.documents,
        dropped={r: len(w) for r, w in by_reason.items()},
        dropped_rows={r: tuple(w[:SHOWN_ROWS]) for r, w in by_reason.items()},
        token_lengths=percentiles(a.lengths),
        cutoff_len=cfg.cutoff_len,
        truncated=a.truncated,
        problems=tuple(a.problems),
        blocks=None if a.documents is None else len(a.rows),
        tail_tokens=a.tail_tokens,
        packed=None if a.packed is None else (a.packed.rows, len(a.packed.input_ids), a.packed.fill(cfg.cutoff_len)),
        mixed=a.mixed,
    )


def _analyse(cfg: RunConfig, sources: list[DatasetSource], model_path: str) -> _Analysis:
    """Read, validate, tokenise and cut; every problem is noted, in the order it is met."""
    a = _Analysis()
    kept = _valid_rows(cfg, sources, a, a.problems.append)
    if any(s.format.text for s in sources):
        _cut_blocks(cfg, model_path, kept, a)
    else:
        _encode_rows(cfg, model_path, kept, a)
    unit = "rows" if a.documents is None else "blocks"
    if a.rows and _eval_count(len(a.rows), cfg.val_size) >= len(a.rows):
        a.problems.append(
            f"val_size {cfg.val_size} holds out {_eval_count(len(a.rows), cfg.val_size)} of {len(a.rows)} {unit} "
            "and leaves none to train on; lower val_size or add data"
        )
    if packs_rows(cfg) and any(a.images):
        a.problems.append("packing: rows with images are not packed (each row's image features follow its tokens)")
    elif packs_rows(cfg) and not a.problems:
        train = [a.rows[i] for i in split_rows(len(a.rows), cfg)[0]]
        a.packed = pack([r.input_ids for r in train], [r.labels for r in train], cfg.cutoff_len)
    return a


def _cut_blocks(cfg: RunConfig, model_path: str, kept: list[_Read], a: _Analysis) -> None:
    """Plain text: every document, untemplated, concatenated and cut into cutoff_len blocks."""
    blocks = text_blocks(
        load_tokenizer(model_path, cfg.trust_remote_code), [r.text for r in kept], cfg.cutoff_len, model_path
    )
    a.rows, a.lengths, a.documents, a.tail_tokens = blocks.rows, blocks.lengths, len(kept), blocks.tail_tokens
    if kept and not a.rows:
        a.problems.append(
            f"cutoff_len {cfg.cutoff_len}: the texts hold {blocks.tail_tokens} tokens in all ({len(kept)} rows), "
            "less than one block; lower cutoff_len or add text"
        )


def _encode_rows(cfg: RunConfig, model_path: str, kept: list[_Read], a: _Analysis) -> None:
    """Conversations and pairs: templated, masked and cut row by row."""
    encoder = ChatEncoder(model_path, cfg.template, cfg.trust_remote_code, encode_options(cfg))
    _check_model_takes_images(cfg, model_path, encoder, any(r.images for r in kept))
    encoded = encoder.encode([r.conversation for r in kept], cfg.train_on_prompt, cfg.mask_history)
    pairs = any(r.rejected for r in kept)
    if pairs and any(r.images for r in kept):
        a.problems.append(f"dataset {cfg.dataset}: preference pairs with images are not supported")
    # a pair's rejected side: the same prompt, the other answer (an empty list when there are no pairs)
    rejected = encoder.encode(
        [r.conversation[:-1] + [r.rejected] for r in kept if r.rejected], cfg.train_on_prompt, cfg.mask_history
    )
    for i, (row, read) in enumerate(zip(encoded, kept)):
        images, where, kto_tag = read.images, read.where, read.kto_tag
        a.lengths.append(max(len(row.input_ids), len(rejected[i].input_ids) if pairs else 0))
        row, truncated = cut(row, cfg.cutoff_len)
        other, other_truncated = cut(rejected[i], cfg.cutoff_len) if pairs else (row, False)
        image_id, image_tokens = encoder.image_token_id, len(images) * encoder.tokens_per_image
        # The model needs every feature of every image: a row cut inside its image tokens cannot train.
        if images and not row.input_ids.count(image_id) == row.prompt_ids.count(image_id) == image_tokens:
            a.drops.append((IMAGE_CUT_DROP, where))
        elif supervised(row) and supervised(other):
            a.rows.append(row)
            a.rejected += [other] if pairs else []
            a.kto_tags += [kto_tag] if kto_tag is not None else []
            a.images.append(images)
            a.truncated += truncated or other_truncated
        else:
            a.drops.append((CUTOFF_DROP, where))
    if kept and not a.rows:
        a.problems.append(
            f"cutoff_len {cfg.cutoff_len}: every row's answer starts beyond it, so nothing is left to learn; "
            f"raise cutoff_len (rows have {min(a.lengths)} to {max(a.lengths)} tokens)"
        )
    cutoff_drops = sum(reason in (CUTOFF_DROP, IMAGE_CUT_DROP) for reason, _ in a.drops)
    if cutoff_drops and a.rows:
        log.warning("dropped %d rows with no answer token within cutoff_len %d", cutoff_drops, cfg.cutoff_len)


def _valid_rows(cfg: RunConfig, sources: list[DatasetSource], a: _Analysis, problem) -> list[_Read]:
    """Every source's valid rows, invalid ones handled as on_invalid_rows says, v1 datasets
    resampled, at most max_samples per source."""
    per_dataset = []
    for source in sources:
        valid, invalid, hint = _read_source(source, a)
        if hint:  # rows of another shape: what was looked for and the dataset_info.json entry that maps them
            hint = f"; dataset '{source.name}' in {source.info_file}: {hint}"
        if invalid and cfg.on_invalid_rows == "error":
            problem(_invalid_rows_message(invalid) + hint)
        elif invalid:
            log.warning(
                "dataset '%s': dropped %d invalid rows: %s",
                source.name,
                len(invalid),
                "; ".join(m for _, _, m in invalid[:SHOWN_ROWS]),
            )
        if not valid:
            # the hint once: with on_invalid_rows: error the invalid-rows problem above carries it
            problem(
                f"dataset '{source.name}': none of its {len(invalid)} rows is valid"
                + (hint if cfg.on_invalid_rows != "error" else "")
            )
        if valid and source.format.formatting.startswith("v1"):
            valid = resample(valid, source.entry, cfg.seed)
        per_dataset.append((source.name, valid[: cfg.max_samples]))
    kept, a.mixed = mix(per_dataset, cfg.mix_strategy, cfg.interleave_probs, cfg.seed)
    return kept


def prompt_sources(cfg: RunConfig) -> list[DatasetSource]:
    """kd_unlabeled_dataset, read as prompts: rows need no answer, and a final one is dropped."""
    return read_as("prompts", resolve_datasets(cfg.dataset_dir, cfg.kd_unlabeled_names), "kd_unlabeled_dataset")


def read_prompts(cfg: RunConfig, sources: list[DatasetSource]) -> list[Conversation]:
    """Every valid prompt of `sources`, read as training rows are; text only."""

    def problem(message: str) -> None:
        raise UserError(message)

    kept = _valid_rows(cfg, sources, _Analysis(), problem)
    if any(r.images for r in kept):
        raise UserError(
            f"kd_unlabeled_dataset {cfg.kd_unlabeled_dataset}: prompts with images cannot be teacher-labelled"
        )
    return [r.conversation for r in kept]


def _check_model_takes_images(cfg: RunConfig, model_path: str, encoder: ChatEncoder, has_images: bool) -> None:
    if has_images and encoder.image_token_id is None:
        raise UserError(
            f"dataset {cfg.dataset} has images but the model at {model_path} is not a vision-language model"
        )


def _read_source(source: DatasetSource, a: _Analysis):
    """One dataset's valid rows, its invalid rows as (file, reason, message), and the first invalid
    row's hint about a row shape other than the entry's ("" if none)."""
    valid, invalid, hint = [], [], ""
    for file in source.files:
        for number, row in enumerate(read_rows(file, source.format.required_columns), start=1):
            a.rows_read += 1
            try:
                rejected = kto_tag = None
                where = f"{file.shown} row {number}"
                if source.format.text:
                    valid.append(_Read([], [], where, text=source.format.to_text(row)))
                    continue
                if source.format.ranking:
                    conversation, rejected = source.format.to_pair(row)
                elif source.format.feedback:
                    conversation, kto_tag = source.format.to_feedback(row)
                else:
                    conversation = source.format.to_conversation(row)
                images = read_images(source, source.format.images(row, conversation))
                valid.append(_Read(conversation, images, where, rejected, kto_tag))
            except InvalidRow as e:
                invalid.append((file.shown, e.reason, f"row {number}: {e}"))
                a.drops.append((e.reason, where))
                hint = hint or e.hint
    return valid, invalid, hint


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


def _write(a: _Analysis, report: DataReport, cfg: RunConfig, out: Path, fingerprint: str) -> None:
    """Write train/, eval/, stats.json and the report into `out`."""
    from datasets import Dataset, Features, List, Value

    train_idx, eval_idx = split_rows(len(a.rows), cfg)
    ids = List(Value("int64"))
    train_cols = {
        "input_ids": [a.rows[i].input_ids for i in train_idx],
        "labels": [a.rows[i].labels for i in train_idx],
    }
    eval_cols = {
        "input_ids": [a.rows[i].input_ids for i in eval_idx],
        "labels": [a.rows[i].labels for i in eval_idx],
        "prompt_ids": [a.rows[i].prompt_ids for i in eval_idx],
        "reference": [a.rows[i].reference for i in eval_idx],
    }
    train_features = {"input_ids": ids, "labels": ids}
    eval_features = {**train_features, "prompt_ids": ids, "reference": Value("string")}
    if a.rejected:  # preference pairs: the row above is the chosen side, these columns the rejected one
        for cols, idx in ((train_cols, train_idx), (eval_cols, eval_idx)):
            cols["rejected_input_ids"] = [a.rejected[i].input_ids for i in idx]
            cols["rejected_labels"] = [a.rejected[i].labels for i in idx]
        train_features |= {"rejected_input_ids": ids, "rejected_labels": ids}
        eval_features |= {"rejected_input_ids": ids, "rejected_labels": ids}
    if a.kto_tags:  # KTO feedback: whether each row's answer is desirable
        for cols, idx in ((train_cols, train_idx), (eval_cols, eval_idx)):
            cols["kto_tag"] = [a.kto_tags[i] for i in idx]
        train_features["kto_tag"] = eval_features["kto_tag"] = Value("bool")
    if any(a.images):  # multimodal data carries each row's image bytes; text data has no images column
        train_cols["images"], eval_cols["images"] = [a.images[i] for i in train_idx], [a.images[i] for i in eval_idx]
        train_features["images"] = eval_features["images"] = List(Value("binary"))
    if a.packed:  # packed training rows: each sequence's position ids restart at every row
        train_cols = {"input_ids": a.packed.input_ids, "labels": a.packed.labels, "position_ids": a.packed.position_ids}
        train_features |= {"position_ids": ids}
    train = Dataset.from_dict(train_cols, features=Features(train_features))
    evaluation = Dataset.from_dict(eval_cols, features=Features(eval_features))
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
        "supervised_tokens": sum(supervised(r) for r in a.rows),
        "packed_sequences": len(a.packed.input_ids) if a.packed else None,
    }
    train.save_to_disk(str(out / "train"))
    # one shard: an empty split saves no shard otherwise, and cannot be loaded
    evaluation.save_to_disk(str(out / "eval"), num_shards=1)
    (out / STATS_FILE).write_text(json.dumps(stats, indent=2))
    (out / REPORT_FILE).write_text(json.dumps(asdict(report), indent=1))
