"""What a run of a stage does beyond the shared pipeline, as one object per stage: the models it
resolves, the rows it adds to the training data, its trainer, the models scored beside base and
fine-tune, its summary notes and its lineage tags.

`Workflow` is plain supervised fine-tuning (`sft`); a stage that differs overrides what it changes
(`distill/workflow.py`). The flows, tasks and training reach a stage only through this object
(`peftflow.stages.get_workflow(cfg)`), so none of them names a stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from peftflow.data import PreparedData
from peftflow.derived_models import resolve_start
from peftflow.evaluation.report import EvalReport
from peftflow.models.resolve import ResolvedModel

# (cfg, prepared-data dir, train rows) -> (Trainer class, its extra keyword arguments, the rows it reads)
TrainerFactory = Callable[..., tuple[type, dict, object]]


@dataclass(frozen=True)
class RunModels:
    """The models one run uses: the one it trains, and those its stage adds, by role (`teacher`)."""

    model: ResolvedModel
    extras: dict[str, ResolvedModel] = field(default_factory=dict)

    @property
    def extras_fingerprint(self) -> str:
        """The extras' share of the train key: their content, not how they were named ("" for none)."""
        return "-".join(m.fingerprint for m in self.extras.values())


class Workflow:
    """Supervised fine-tuning: the base model, the dataset's rows, the stock trainer."""

    def resolve(self, cfg) -> RunModels:
        """The model the run trains: `model_name_or_path`, an adapter merged into its base."""
        return RunModels(resolve_start(cfg))

    def check_inputs(self, cfg) -> None:
        """What the stage reads besides the dataset, checked before training (raises UserError)."""

    def adds_rows(self, cfg) -> bool:
        """Whether `training_data` adds rows to the prepared data (the flow then runs it as a task)."""
        return False

    def training_data(self, cfg, models: RunModels, data: PreparedData) -> tuple[PreparedData, str]:
        """The rows the run trains on, and a Markdown line about what the stage added."""
        return data, ""

    def data_fingerprint(self, cfg, models: RunModels, data: PreparedData) -> str:
        """The fingerprint `training_data` will have, known without building it (retrain compares it)."""
        return data.fingerprint

    def trainer(self, cfg, models: RunModels) -> TrainerFactory | None:
        """None: training's own SupervisedTokenTrainer."""
        return None

    def evaluation_models(self, models: RunModels) -> dict[str, str]:
        """Models scored beside base and fine-tune, by label."""
        return {}

    def preference(self, cfg):
        """(PreferenceSettings, label of the reference model) when the held-out rows are preference
        pairs scored by implicit reward; None: no preference scores."""
        return None

    def summary_notes(self, report: EvalReport) -> list[str]:
        return []

    def lineage_tags(self, cfg, models: RunModels) -> dict[str, str]:
        """Tags added to (or replacing) the shared lineage tags of a run and its version."""
        return {}
