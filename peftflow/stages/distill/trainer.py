"""The distillation stage's trainer: the student learns the teacher's distribution (live, or from
its cached top-k logits) through the KD loss of peftflow.losses."""

from __future__ import annotations

from pathlib import Path

import torch

from peftflow.losses import KDSettings, TeacherTopK, decoder_and_head, final_hidden, kd_loss, supervised
from peftflow.models.resolve import fingerprint_dir
from peftflow.paths import cache_dir
from peftflow.stages.distill.cache import TeacherCache, teacher_cache
from peftflow.stages.distill.teacher import load_teacher
from peftflow.training.trainer import SupervisedTokenTrainer


class DistillTrainer(SupervisedTokenTrainer):
    """The student's loss is the distillation loss against a frozen teacher (or its cached top-k)."""

    def __init__(self, *args, teacher=None, cache=None, settings=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher, self.cache, self.settings = teacher, cache, settings
        self._kd = [0.0, 0.0, 0]  # kl sum, ce sum, steps since the last log

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.supervised_tokens += int((inputs["labels"][:, 1:] != -100).sum())
        if self.teacher is not None and self.teacher.device != model.device:
            self.teacher.to(model.device)  # the student is where the Trainer put it (a GPU): the teacher joins it
        # As the stock loss: divided by the optimizer step's supervised positions under gradient
        # accumulation, where the Trainer then does not divide by the accumulation steps itself.
        items = num_items_in_batch if self.model_accepts_loss_kwargs else None
        with self.accelerator.autocast():  # distill_step calls the decoder, not model.forward
            out = distill_step(model, self.teacher, inputs, self.settings, self.cache, items)
        self._kd = [self._kd[0] + float(out["kl"]), self._kd[1] + float(out["ce"]), self._kd[2] + 1]
        return (out["loss"], None) if return_outputs else out["loss"]

    def log(self, logs, *args, **kwargs):
        kl, ce, n = self._kd
        if "loss" in logs and n:
            logs["kd_kl"], logs["kd_ce"] = round(kl / n, 5), round(ce / n, 5)
            self._kd = [0.0, 0.0, 0]
        super().log(logs, *args, **kwargs)


def distill_step(
    student, teacher, batch, settings: KDSettings, cache: TeacherCache | None = None, num_items_in_batch=None
):
    """KD loss for one batch: from the live teacher, or from the cache rows named by batch['row_id']
    (moved to the student's device)."""
    s_hidden, targets = supervised(final_hidden(student, batch["input_ids"], batch["attention_mask"]), batch["labels"])
    s_weight = decoder_and_head(student)[1].weight
    if cache is not None:
        top = cache.rows(batch["row_id"].tolist())
        top = TeacherTopK(top.values.to(s_hidden.device), top.indices.to(s_hidden.device))
        return kd_loss(s_hidden, s_weight, targets, settings, teacher_topk=top, num_items_in_batch=num_items_in_batch)
    with torch.no_grad():
        t_hidden, _ = supervised(final_hidden(teacher, batch["input_ids"], batch["attention_mask"]), batch["labels"])
    t_weight = decoder_and_head(teacher)[1].weight
    return kd_loss(
        s_hidden,
        s_weight,
        targets,
        settings,
        lambda a, b: t_hidden[a:b] @ t_weight.T,
        num_items_in_batch=num_items_in_batch,
    )


def distill_trainer(cfg, data_path: str, train_set, teacher_path: str):
    """The trainer factory of stage: distill (peftflow.stages.workflow.TrainerFactory)."""
    extra = distill_kwargs(cfg, teacher_path, data_path, train_set)
    # Rows carry their index so a batch can find its cached teacher outputs.
    return DistillTrainer, extra, train_set.add_column("row_id", list(range(len(train_set))))


def distill_kwargs(cfg, teacher_path: str, data_path: str, train_set):
    """Teacher, KD settings and (optional) top-k cache keyed by teacher, data and k."""
    teacher = load_teacher(teacher_path, cfg.trust_remote_code)
    settings = KDSettings(cfg.kd_temperature, cfg.kd_ratio, cfg.kd_direction, cfg.kd_chunk_size)
    cache = None
    if cfg.teacher_topk:
        name = f"{fingerprint_dir(Path(teacher_path))}-{Path(data_path).name}-k{cfg.teacher_topk}.safetensors"
        cache = teacher_cache(teacher, train_set, cfg.teacher_topk, cache_dir("teacher") / name)
        teacher = None  # the cache replaces it
    return dict(teacher=teacher, cache=cache, settings=settings)
