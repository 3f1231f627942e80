"""Train an adapter with the HF Trainer: checkpoints, resume, metrics. Path in, path out."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from datasets import load_from_disk
from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                          TrainerCallback, TrainingArguments, set_seed)
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import get_last_checkpoint

from peftflow.config import RunConfig
from peftflow.methods import get_method

log = logging.getLogger("peftflow.train")

# After a resume the first logged loss must be near the last one logged before the crash;
# a run that silently restarted from scratch shows the untrained loss instead.
RESUME_LOSS_TOLERANCE = 0.5


@dataclass(frozen=True)
class TrainResult:
    adapter_dir: str
    final_loss: float
    steps: int
    train_seconds: float
    supervised_tokens: int
    tokens_per_second: float
    trainable_params: int
    total_params: int
    resumed_from_step: int | None
    loss_history: tuple[tuple[int, float], ...]

    def metrics(self) -> dict[str, float]:
        return {"train_loss": self.final_loss, "train_steps": self.steps, "train_seconds": self.train_seconds,
                "supervised_tokens_per_s": self.tokens_per_second, "trainable_params": self.trainable_params,
                "total_params": self.total_params}


class _SupervisedTokenTrainer(Trainer):
    """Counts label tokens (the work that trains) and reports supervised tokens/s in each log."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.supervised_tokens = 0
        self._last_log = (time.perf_counter(), 0)

    def _get_train_sampler(self, train_dataset=None):
        # Length grouping over the *global* batch: N processes x batch B then see the same
        # examples per step as one process with batch N x B (the sampler's order is seeded).
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler) and self.args.world_size > 1:
            sampler.batch_size *= self.args.world_size
        return sampler

    def compute_loss(self, model, inputs, *args, **kwargs):
        self.supervised_tokens += int((inputs["labels"][:, 1:] != -100).sum())
        return super().compute_loss(model, inputs, *args, **kwargs)

    def log(self, logs, *args, **kwargs):
        now, seen = time.perf_counter(), self.supervised_tokens
        t0, seen0 = self._last_log
        if "loss" in logs and now > t0:
            logs["supervised_tokens_per_s"] = round((seen - seen0) / (now - t0), 1)
        self._last_log = (now, seen)
        super().log(logs, *args, **kwargs)


class MetricsCallback(TrainerCallback):
    """Forwards every logged dict to `sink(step, metrics)`: MLflow, a progress bar, a test."""

    def __init__(self, sink: Callable[[int, dict[str, float]], None]):
        self.sink = sink

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.sink(state.global_step, {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})


def training_arguments(cfg: RunConfig, output_dir: Path) -> TrainingArguments:
    # transformers 5 has no warmup_ratio: warmup_steps takes a float in [0, 1) as a ratio.
    warmup = cfg.warmup_steps if cfg.warmup_steps else cfg.warmup_ratio
    return TrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=warmup,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim=cfg.optim,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        bf16=cfg.bf16,
        fp16=cfg.fp16,
        activation_checkpointing=cfg.gradient_checkpointing,  # transformers 5 name for it
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length",  # fewer pad tokens per batch
        disable_tqdm=True,
    )


def load_base(model_path: str, cfg: RunConfig):
    dtype = torch.bfloat16 if cfg.bf16 else torch.float16 if cfg.fp16 else torch.float32
    return AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, trust_remote_code=cfg.trust_remote_code)


def run(cfg: RunConfig, model_path: str, data_path: str, output_dir: str | Path,
        callbacks: tuple[TrainerCallback, ...] = ()) -> TrainResult:
    """Train `cfg`'s method on the prepared data; resume from the last checkpoint in output_dir."""
    output_dir = Path(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    set_seed(cfg.seed)  # adapter init: the same weights in every process and every run
    model = get_method(cfg).build(load_base(model_path, cfg), cfg)
    trainable, total = model.get_nb_trainable_parameters()
    train_set = load_from_disk(str(Path(data_path) / "train")).select_columns(["input_ids", "labels"])

    args = training_arguments(cfg, output_dir)
    trainer = _SupervisedTokenTrainer(
        model=model, args=args, train_dataset=train_set,
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, pad_to_multiple_of=8),
        callbacks=list(callbacks),
    )
    checkpoint = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    resumed_from = _loss_before(checkpoint) if checkpoint else None
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - start
    history = tuple((h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h)
    if resumed_from:
        _check_resume(resumed_from, history)

    adapter_dir = output_dir / "adapter"
    final_loss = history[-1][1] if history else float(result.training_loss)
    out = TrainResult(
        adapter_dir=str(adapter_dir), final_loss=final_loss, steps=trainer.state.global_step,
        train_seconds=round(seconds, 2), supervised_tokens=trainer.supervised_tokens,
        tokens_per_second=round(trainer.supervised_tokens / seconds, 1) if seconds else 0.0,
        trainable_params=trainable, total_params=total,
        resumed_from_step=resumed_from[0] if resumed_from else None, loss_history=history,
    )
    if trainer.is_world_process_zero():  # under torchrun, one process writes the results
        model.save_pretrained(adapter_dir, safe_serialization=True)
        tokenizer.save_pretrained(adapter_dir)
        (output_dir / "train_result.json").write_text(json.dumps(asdict(out), indent=1))
    return out


def _loss_before(checkpoint: str) -> tuple[int, float] | None:
    """(step, last logged loss) saved with a checkpoint."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    losses = [(h["step"], h["loss"]) for h in state["log_history"] if "loss" in h]
    return losses[-1] if losses else (state["global_step"], math.nan)


def _check_resume(before: tuple[int, float], history: tuple[tuple[int, float], ...]) -> None:
    step, loss = before
    after = [(s, l) for s, l in history if s > step]
    if not after or math.isnan(loss):
        return
    first = after[0][1]
    if first > loss + RESUME_LOSS_TOLERANCE * max(loss, 1.0):
        raise RuntimeError(f"resume from step {step} looks like a restart from scratch: "
                           f"loss {loss:.3f} before, {first:.3f} after")
    log.info("resumed at step %d: loss %.3f before, %.3f after", step, loss, first)
