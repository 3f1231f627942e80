"""The Training group's keys for evaluation during training and for checkpoints (LLaMA-Factory's and
HF TrainingArguments' names): RunConfig inherits them after the group's other keys (config/run.py).
Their cross-field checks are config/checks.py `check_evaluation`; what a run does with them is
peftflow/training/ (`arguments.py`, `during.py`, `resume.py`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from peftflow.config.sections import Strict

EVAL_METRICS = ("loss", "eval_loss")  # what the Trainer computes on the held-out rows while training


class CheckpointKeys(Strict):
    # fmt: off
    eval_strategy: Literal["no", "steps", "epoch"] = Field(
        "no", title="Training: evaluate during training",
        description="The held-out rows' loss (eval_loss; needs val_size > 0) during training, logged beside the "
                    "training loss: steps: every eval_steps; epoch: at each epoch's end; no: the held-out rows "
                    "are scored after training only. Stages sft and pt.")
    eval_steps: int | None = Field(None, gt=0, title="Training: evaluate every N steps",
                                   description="With eval_strategy: steps. Empty: Log every N steps.")
    per_device_eval_batch_size: int | None = Field(None, gt=0, title="Training: evaluation batch size per device",
                                                   description="Held-out rows per evaluation batch. Empty: the "
                                                               "training batch size.")
    metric_for_best_model: str | None = Field(
        None, title="Training: metric for the best checkpoint",
        description="loss (= eval_loss, the only metric computed during training): what picks the best checkpoint "
                    "and what early stopping watches. Empty: eval_loss with load_best_model_at_end.")
    greater_is_better: bool | None = Field(None, title="Training: greater metric is better",
                                           description="Empty: false for a loss.")
    load_best_model_at_end: bool = Field(
        False, title="Training: ship the best checkpoint",
        description="Keep the checkpoint with the best metric and ship it (the adapter merged, scored and "
                    "published) instead of the last step's weights. Needs eval_strategy, and save_strategy equal "
                    "to it (save_steps a multiple of eval_steps) or best.")
    early_stopping_steps: int | None = Field(
        None, gt=0, title="Training: early-stopping patience",
        description="Stop once the metric has not improved for N evaluations in a row (transformers' "
                    "EarlyStoppingCallback). Needs eval_strategy and metric_for_best_model.")
    save_strategy: Literal["no", "steps", "epoch", "best"] = Field(
        "steps", title="Training: checkpoint when",
        description="steps: every save_steps; epoch: at each epoch's end; best: at each evaluation "
                    "that improves the metric; no: never, so a killed or retried run restarts from scratch (no "
                    "automatic resume).")
    save_only_model: bool = Field(
        False, title="Training: checkpoint weights only",
        description="Checkpoints without optimizer, scheduler and RNG state: smaller, but they cannot resume "
                    "exactly, so a killed or retried run restarts from scratch (no automatic resume).")
    resume_from_checkpoint: str | bool | None = Field(
        None, title="Training: resume from",
        description="Empty: resume from the run's last complete checkpoint when there is one (automatic). A path: "
                    "start from that complete checkpoint (weights, optimizer, schedule, step) unless the run has "
                    "its own checkpoint already, which wins. true: the run's last complete checkpoint, refused "
                    "when there is none.")
    # fmt: on
