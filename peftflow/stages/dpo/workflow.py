"""A DPO run: the reference model (the trained model with its adapter off, or `ref_model`), the
preference trainer, held-out pairs scored by implicit reward, and the loss and reference in the lineage."""

from __future__ import annotations

from functools import partial

from peftflow.evaluation.report import EvalReport
from peftflow.stages.dpo.trainer import preference_settings, preference_trainer
from peftflow.stages.reference import ReferenceWorkflow
from peftflow.stages.workflow import RunModels, TrainerFactory


class Preference(ReferenceWorkflow):
    def trainer(self, cfg, models: RunModels) -> TrainerFactory:
        fingerprint, path = self.reference_source(models)
        return partial(preference_trainer, reference_fingerprint=fingerprint, reference_path=path)

    def preference(self, cfg):
        return preference_settings(cfg), "reference" if cfg.ref_model else "base"

    def summary_notes(self, report: EvalReport) -> list[str]:
        tuned = report.models["tuned"].preference
        if not tuned:
            return []
        return [
            f"held-out pairs: the fine-tune ranks the chosen answer first in {tuned['accuracy']:.1%} "
            f"(reward margin {tuned['margin']:+.3f})"
        ]

    def lineage_tags(self, cfg, models: RunModels) -> dict[str, str]:
        return {"pref_loss": cfg.pref_loss} | super().lineage_tags(cfg, models)


WORKFLOW = Preference()
