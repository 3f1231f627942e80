"""Teacher-labelled data: the prompts of `kd_unlabeled_dataset` (rows without answers) answered by
the teacher, encoded like any training row and added to the student's training split.

This is how distillation moves a big model's skill into a small one when labels are scarce: the
teacher writes the answers (greedy, or sampled at kd_label_temperature), the student learns them
with the logit loss. The result is a prepared-data dir of its own, cached and keyed by the
labelled data, the teacher, the prompts and the generation settings, so an unchanged rerun never
generates twice (and with a run store, another machine's labels are fetched).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch

from peftflow.config import RunConfig
from peftflow.data.fingerprint import data_fingerprint, encode_options
from peftflow.data.prepare import STATS_FILE, PreparedData, prompt_sources, read_prompts
from peftflow.data.templates import stop_token_ids
from peftflow.data.tokenize import ChatEncoder, cut, supervised
from peftflow.errors import UserError
from peftflow.evaluation.scoring import generate, load_model
from peftflow.models.resolve import ResolvedModel
from peftflow.paths import cache_dir
from peftflow.store import build_sealed

log = logging.getLogger("peftflow.distill")

LABEL_VERSION = "1"  # bump when the output for the same inputs changes
GENERATION_BATCH = 16


def label_settings(cfg: RunConfig) -> dict:
    return {"temperature": cfg.kd_label_temperature, "max_new_tokens": cfg.kd_label_max_new_tokens, "seed": cfg.seed}


def labels_fingerprint(cfg: RunConfig, teacher: ResolvedModel, student_path: str, data: PreparedData) -> str:
    """The teacher-labelled data's fingerprint, known without generating: what retrain compares."""
    h = hashlib.sha256()
    for part in (
        LABEL_VERSION,
        data.fingerprint,
        teacher.fingerprint,
        data_fingerprint(cfg, prompt_sources(cfg), student_path),
        json.dumps(label_settings(cfg), sort_keys=True),
    ):
        h.update(f"{part}\0".encode())
    return h.hexdigest()[:16]


def teacher_labelled(cfg: RunConfig, teacher: ResolvedModel, student_path: str, data: PreparedData) -> PreparedData:
    """`data` with the teacher's answers to every kd_unlabeled_dataset prompt added to its train split
    (the held-out split is unchanged: scores stay comparable with a run without them)."""
    sources = prompt_sources(cfg)
    fingerprint = labels_fingerprint(cfg, teacher, student_path, data)
    target = cache_dir("prepared") / fingerprint
    if not (target / STATS_FILE).is_file():
        build_sealed(
            cfg.storage,
            f"cache/prepared/{fingerprint}",
            target,
            lambda out: _write(cfg, teacher, student_path, data, read_prompts(cfg, sources), out, fingerprint),
            ready=lambda t: (t / STATS_FILE).is_file(),
        )
    stats = json.loads((target / STATS_FILE).read_text())
    log.info(
        "teacher-labelled data at %s: %d labelled + %d teacher-labelled rows",
        target,
        data.train_rows,
        stats["teacher_labelled_rows"],
    )
    return PreparedData(
        str(target), fingerprint, stats["train_rows"], stats["eval_rows"], stats["dropped"], stats["truncated"]
    )


def teacher_answers(cfg: RunConfig, teacher_path: str, encoder: ChatEncoder, prompts: list) -> list[str]:
    """The teacher's answer to each prompt, through the student's chat template."""
    placeholder = [{"role": "assistant", "content": "-"}]
    prompt_ids = [row.prompt_ids for row in encoder.encode([p + placeholder for p in prompts], False, False)]
    model = load_model(teacher_path, trust_remote_code=cfg.trust_remote_code)
    if torch.cuda.is_available():  # on a GPU pool the teacher writes its answers there
        model.to("cuda")
    torch.manual_seed(cfg.seed)
    return generate(
        model,
        encoder.tokenizer,
        prompt_ids,
        cfg.kd_label_max_new_tokens,
        GENERATION_BATCH,
        stop_token_ids(encoder.tokenizer, cfg.template),
        temperature=cfg.kd_label_temperature,
    )


def _write(
    cfg: RunConfig,
    teacher: ResolvedModel,
    student_path: str,
    data: PreparedData,
    prompts: list,
    out: Path,
    fingerprint: str,
) -> None:
    from datasets import Dataset, concatenate_datasets, load_from_disk

    start = time.perf_counter()
    encoder = ChatEncoder(student_path, cfg.template, cfg.trust_remote_code, encode_options(cfg))
    answers = teacher_answers(cfg, teacher.path, encoder, prompts)
    answered = [p + [{"role": "assistant", "content": a.strip()}] for p, a in zip(prompts, answers) if a.strip()]
    rows = [cut(row, cfg.cutoff_len) for row in encoder.encode(answered, cfg.train_on_prompt, cfg.mask_history)]
    kept = [(row, truncated) for row, truncated in rows if supervised(row)]
    if not kept:
        raise UserError(
            f"kd_unlabeled_dataset {cfg.kd_unlabeled_dataset}: the teacher answered none of its "
            f"{len(prompts)} prompts within cutoff_len {cfg.cutoff_len}"
        )
    train = load_from_disk(str(Path(data.path) / "train"))
    labelled = Dataset.from_dict(
        {"input_ids": [r.input_ids for r, _ in kept], "labels": [r.labels for r, _ in kept]}, features=train.features
    )
    concatenate_datasets([train, labelled]).save_to_disk(str(out / "train"))
    load_from_disk(str(Path(data.path) / "eval")).save_to_disk(str(out / "eval"), num_shards=1)
    stats = json.loads((Path(data.path) / STATS_FILE).read_text())
    stats.update(
        {
            "fingerprint": fingerprint,
            "labelled_data": data.fingerprint,
            "train_rows": len(train) + len(kept),
            "teacher": teacher.fingerprint,
            "teacher_prompts": len(prompts),
            "teacher_labelled_rows": len(kept),
            "teacher_label_settings": label_settings(cfg),
            "teacher_label_seconds": round(time.perf_counter() - start, 1),
            "truncated": stats["truncated"] + sum(truncated for _, truncated in kept),
        }
    )
    (out / STATS_FILE).write_text(json.dumps(stats, indent=2))
