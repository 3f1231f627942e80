"""The HF Trainer as peftflow trains with it: supervised-token accounting, the chunked loss, and
the callbacks that report steps (MLflow, progress, tests)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from peftflow.losses import supervised_ce, supports_chunked_loss

log = logging.getLogger("peftflow.train")


class SupervisedTokenTrainer(Trainer):
    """Counts label tokens (the work that trains) and reports supervised tokens/s in each log.
    The loss is the stock one, computed over supervised positions only (peftflow.lm_loss)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.supervised_tokens = 0
        self._last_log = (time.perf_counter(), 0)
        # Under DDP the forward must go through the wrapper (gradient sync): stock loss there.
        self.chunked_loss = supports_chunked_loss(self.model) and self.args.world_size == 1

    def _get_train_sampler(self, train_dataset=None):
        # Length grouping over the *global* batch: N processes x batch B then see the same
        # examples per step as one process with batch N x B (the sampler's order is seeded).
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler) and self.args.world_size > 1:
            sampler.batch_size *= self.args.world_size
        return sampler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:  # the tokens that train; an evaluation's (eval_strategy) are not counted
            self.supervised_tokens += int((inputs["labels"][:, 1:] != -100).sum())
        if not self.chunked_loss:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # accelerate's autocast wraps model.forward only; this path calls the decoder directly.
        with self.accelerator.autocast():
            loss = supervised_ce(model, inputs, num_items_in_batch if self.model_accepts_loss_kwargs else None)
        # No logits to return (none were made): the evaluation loop (eval_strategy) reads the loss only.
        return (loss, {}) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        now, seen = time.perf_counter(), self.supervised_tokens
        t0, seen0 = self._last_log
        if "loss" in logs and now > t0:
            logs["supervised_tokens_per_s"] = round((seen - seen0) / (now - t0), 1)
        self._last_log = (now, seen)
        super().log(logs, *args, **kwargs)


class FirstStep(TrainerCallback):
    """Records the first optimizer step this process finishes (global step, so it counts on)."""

    def __init__(self):
        self.step: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.step is None:
            self.step = state.global_step


class LogLastStep(TrainerCallback):
    """Logs at the last optimizer step whatever `logging_steps` says: else a run shorter than
    `logging_steps` (or not ending on a multiple of it) logs no final `loss`."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_log = True


class MetricsCallback(TrainerCallback):
    """Forwards every logged dict to `sink(step, metrics)`: MLflow, a progress bar, a test."""

    def __init__(self, sink: Callable[[int, dict[str, float]], None]):
        self.sink = sink

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.sink(state.global_step, {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})


@dataclass(frozen=True)
class StepProgress:
    """Where a training run is: what the log line, the progress bar and the artifact show."""

    step: int
    total: int
    loss: float | None
    learning_rate: float | None
    eta_s: float | None  # from the pace of the steps this process ran (a resumed run counts from its resume)
    eval_loss: float | None = None  # an evaluation's line (eval_strategy): the held-out loss

    @property
    def percent(self) -> float:
        return round(100 * self.step / self.total, 1) if self.total else 0.0

    def __str__(self) -> str:
        parts = [f"step {self.step}/{self.total}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.eval_loss is not None:
            parts.append(f"eval_loss {self.eval_loss:.4f}")
        if self.learning_rate is not None:
            parts.append(f"lr {self.learning_rate:.1e}")
        if self.eta_s is not None:
            parts.append(f"eta {timedelta(seconds=round(self.eta_s))}")
        return " ".join(parts)


class TrainingProgress(TrainerCallback):
    """One readable line per logging step and per evaluation (its eval_loss) on the `peftflow.train`
    logger; the record carries the StepProgress as `progress` for handlers that draw it (the CLI's
    bar). Subclasses add sinks in `report`."""

    def __init__(self):
        self._start: tuple[float, int] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = (time.perf_counter(), state.global_step)
        log.info("training %d steps", state.max_steps)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs and "eval_loss" not in logs:  # the closing summary dict (train_runtime, ...)
            return
        t0, step0 = self._start or (time.perf_counter(), state.global_step)
        done, left = state.global_step - step0, state.max_steps - state.global_step
        eta = (time.perf_counter() - t0) / done * left if done > 0 else None
        self.report(
            StepProgress(
                state.global_step,
                state.max_steps,
                float(logs["loss"]) if "loss" in logs else None,
                float(logs["learning_rate"]) if "learning_rate" in logs else None,
                eta,
                float(logs["eval_loss"]) if "eval_loss" in logs else None,
            )
        )

    def on_train_end(self, args, state, control, **kwargs):
        log.info("training done: %d steps", state.global_step)

    def report(self, progress: StepProgress) -> None:
        log.info("%s", progress, extra={"progress": progress})
