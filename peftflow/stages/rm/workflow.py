"""A reward run: the reward trainer on the base with its new head, and the held-out pair accuracy in
the summary. The models, data and lineage are those of any run; the head is chosen where models load
(peftflow/models/heads.py), from the stage's `reward_head`."""

from __future__ import annotations

from peftflow.errors import UserError
from peftflow.evaluation.report import EvalReport
from peftflow.models import vision
from peftflow.stages.rm.trainer import reward_trainer
from peftflow.stages.workflow import RunModels, TrainerFactory, Workflow


class Reward(Workflow):
    def resolve(self, cfg) -> RunModels:
        models = super().resolve(cfg)
        if vision.is_vision_language(models.model.path):
            raise UserError(f"stage: rm: {cfg.model_name_or_path} is a vision-language model; rm trains text models")
        return models

    def trainer(self, cfg, models: RunModels) -> TrainerFactory:
        return reward_trainer

    def summary_notes(self, report: EvalReport) -> list[str]:
        tuned = report.models["tuned"].preference
        if not tuned:
            return []
        return [
            f"held-out pairs: the reward model scores the chosen answer higher in {tuned['accuracy']:.1%} "
            f"(mean margin {tuned['margin']:+.3f})"
        ]


WORKFLOW = Reward()
