"""Training stages (LLaMA-Factory's `stage:`): one package per stage, each declaring its `Stage`
(form group, checks, row kind) in its `__init__.py`, its config keys in its `keys.py` (a pydantic
model) and what a run of it does in its `workflow.py`; the table is built from the packages listed
here.

To add a stage: write its package (see `sft/` for the smallest, `distill/` for one with keys) and
add its name to `_MODULES`. The config accepts it as a `stage`, inherits its keys and checks it;
the flows run its workflow.
"""

from __future__ import annotations

from importlib import import_module

from pydantic import BaseModel

from peftflow.stages.base import FormGroup, Stage

_MODULES = ("sft", "distill", "dpo", "kto", "pt", "rm")

STAGES: dict[str, Stage] = {m: import_module(f"peftflow.stages.{m}").STAGE for m in _MODULES}
# The stages' keys models, in STAGES order: RunConfig inherits them all.
STAGE_KEYS: tuple[type[BaseModel], ...] = tuple(s.keys for s in STAGES.values() if s.keys)

__all__ = ["STAGES", "STAGE_KEYS", "FormGroup", "Stage", "get_stage", "get_workflow"]


def get_stage(cfg) -> Stage:
    return STAGES[cfg.stage]


def get_workflow(cfg):
    """The stage's `Workflow` (peftflow/stages/workflow.py), imported by name when a run needs it:
    it imports models, data and trainers, which import the config that reads this table."""
    return import_module(f"peftflow.stages.{cfg.stage}.workflow").WORKFLOW
