"""What a training stage (LLaMA-Factory's `stage:`, the training objective) is to the config: its
keys (a pydantic model in the stage's `keys.py`, which RunConfig inherits), their form group, its
checks, the rows it reads. This half imports nothing of torch, peft or peftflow above `methods`:
the config reads it.

The other half, what a run of the stage does (the models it resolves, its trainer, its evaluation
extras, its lineage), is the stage package's `workflow.py` (`peftflow/stages/workflow.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel


@dataclass(frozen=True)
class FormGroup:
    """Where a stage's own keys sit in the dashboard's run form."""

    key: str
    title: str
    description: str


def in_one_process(cfg, stage: str, why: str) -> None:
    """Refuse torchrun for a stage whose extra state lives in one process (`why`)."""
    if cfg.num_processes > 1 or cfg.nnodes > 1:
        raise ValueError(
            f"stage: {stage} trains in one process ({why}); set num_processes: 1 and nnodes: 1 "
            f"(got {cfg.num_processes} and {cfg.nnodes})"
        )


def no_evaluation_during_training(cfg, stage: str, why: str) -> None:
    """Refuse eval_strategy for a stage whose trainer cannot score its held-out rows while training (`why`)."""
    if cfg.eval_strategy != "no":
        raise ValueError(
            f"eval_strategy: {cfg.eval_strategy}: stage: {stage} does not evaluate during training ({why}); "
            "its held-out rows are scored after training"
        )


def _named_after_base(cfg) -> tuple[str, str]:
    return cfg.model_name_or_path, ""


@dataclass(frozen=True)
class Stage:
    name: str  # the `stage` value
    description: str  # what it trains, for the config field's help
    # The config keys only this stage reads, declared once: RunConfig inherits the model (its fields,
    # defaults, checks and properties) and `options` names its fields.
    keys: type[BaseModel] | None = None
    form_group: FormGroup | None = None  # the options' group in the run form
    # (cfg) -> None; raises ValueError naming the keys of a combination this stage cannot train
    check: Callable[[Any], None] = lambda cfg: None
    row_kind: str = "conversations"  # what its `dataset` rows are (peftflow/data/row_kinds.py)
    # Its rows go through the chat template (`template`) and generation stops at its end of turn;
    # False: plain text, and generation stops at the tokenizer's eos, which ends each text.
    templated: bool = True
    # It trains a model that scores text: the reward head (peftflow/models/heads.py) on the base.
    reward_head: bool = False
    sweepable: bool = True  # `peftflow sweep` may train variants of it
    # Its training rows may be packed (packing / neat_packing: whole rows binned into cutoff_len
    # sequences, peftflow/data/packing.py). Plain text (row_kind "text") is always cut into blocks.
    packs_rows: bool = False
    # Its rows may be streamed (`streaming`, peftflow/data/streaming.py): read, encoded and shuffled as
    # the stock trainer trains, none prepared beforehand.
    streams: bool = False
    # Its loss is the causal-LM loss the model's own forward computes (or its chunked equivalent),
    # to which moe_aux_loss_coef adds the router's; the preference and distillation losses are not.
    lm_loss: bool = False
    # Options that name models: the train key holds those models' content fingerprints instead.
    models_by_content: tuple[str, ...] = ()
    # (cfg) -> (model reference, suffix) the default registered-model name starts with
    named_after: Callable[[Any], tuple[str, str]] = _named_after_base

    @property
    def options(self) -> tuple[str, ...]:
        """The stage's keys: set (to a value other than the default) with another stage, they are
        refused instead of silently ignored."""
        return tuple(self.keys.model_fields) if self.keys else ()
