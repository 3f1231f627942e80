"""The HF Trainer as peftflow trains with it: supervised-token accounting, the chunked loss, and
the callbacks that report steps (MLflow, progress, tests)."""

from __future__ import annotations

import time
from typing import Callable

from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from peftflow.losses import supervised_ce, supports_chunked_loss


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
        self.supervised_tokens += int((inputs["labels"][:, 1:] != -100).sum())
        if not self.chunked_loss:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # accelerate's autocast wraps model.forward only; this path calls the decoder directly.
        with self.accelerator.autocast():
            loss = supervised_ce(model, inputs, num_items_in_batch if self.model_accepts_loss_kwargs else None)
        return (loss, None) if return_outputs else loss

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
