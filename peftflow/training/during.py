"""Evaluation during training (`eval_strategy`): the held-out rows the Trainer evaluates, early
stopping (`early_stopping_steps`), and what the run's evaluations decided: the eval_loss curve, the
best step and metric (the weights shipped with `load_best_model_at_end`), why a run stopped early."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from datasets import load_from_disk
from transformers import EarlyStoppingCallback

from peftflow.errors import UserError

log = logging.getLogger("peftflow.train")


def eval_rows(cfg, data_path: str | Path):
    """The prepared held-out split (`<data_path>/eval`) when the run evaluates during training, else None."""
    if cfg.eval_strategy == "no":
        return None
    rows = load_from_disk(str(Path(data_path) / "eval"))
    if not len(rows):
        raise UserError(f"eval_strategy: {cfg.eval_strategy}: the prepared data at {data_path} holds no held-out rows")
    return rows


def early_stopping(cfg) -> tuple[EarlyStoppingCallback, ...]:
    """LLaMA-Factory's `early_stopping_steps: N`: transformers' callback with a patience of N evaluations."""
    if not cfg.early_stopping_steps:
        return ()
    return (EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_steps),)


@dataclass(frozen=True)
class Evaluated:
    """What the evaluations during training decided (the TrainResult fields of the same names)."""

    eval_history: tuple[tuple[int, float], ...] = ()  # (step, eval_loss)
    best_metric_name: str = ""  # e.g. eval_loss; "" when no metric picks a best step
    best_step: int | None = None
    best_metric: float | None = None
    stopped_early_at: int | None = None  # the step early stopping ended the run at
    stop_reason: str = ""


def evaluated(trainer) -> Evaluated:
    """Read from the trainer after `train`: its log history, state and early-stopping callback (the
    instance in the handler: a resume replaces the one passed in with one restored from the checkpoint)."""
    state, args = trainer.state, trainer.args
    history = tuple((h["step"], float(h["eval_loss"])) for h in state.log_history if "eval_loss" in h)
    metric = args.metric_for_best_model
    if not metric or state.best_metric is None:
        return Evaluated(history)
    name = metric if metric.startswith("eval_") else f"eval_{metric}"
    best_step = state.best_global_step or next(
        (h["step"] for h in state.log_history if h.get(name) == state.best_metric), None
    )
    out = Evaluated(history, name, best_step, float(state.best_metric))
    stopper = next((c for c in trainer.callback_handler.callbacks if isinstance(c, EarlyStoppingCallback)), None)
    patience = stopper.early_stopping_patience if stopper else 0
    if stopper and stopper.early_stopping_patience_counter >= patience and state.global_step < state.max_steps:
        reason = (
            f"{name} did not improve on {state.best_metric:.4f} (step {best_step}) in {patience} evaluation(s) "
            f"(early_stopping_steps: {patience})"
        )
        out = Evaluated(history, name, best_step, out.best_metric, state.global_step, reason)
        log.info("stopped early at step %d of %d: %s", state.global_step, state.max_steps, reason)
    if args.load_best_model_at_end and state.best_model_checkpoint:
        log.info("best checkpoint: step %s, %s %.4f; its weights are saved", best_step, name, state.best_metric)
    return out
