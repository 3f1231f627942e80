"""A DPO run: the reference model (the trained model with its adapter off, or `ref_model`), the
preference trainer, held-out pairs scored by implicit reward, and the reference in the lineage."""

from __future__ import annotations

from functools import partial

from peftflow.evaluation.report import EvalReport
from peftflow.models.resolve import resolve_model
from peftflow.stages.dpo.trainer import preference_settings, preference_trainer
from peftflow.stages.workflow import RunModels, TrainerFactory, Workflow


class Preference(Workflow):
    def resolve(self, cfg) -> RunModels:
        models = super().resolve(cfg)
        if not cfg.ref_model:
            return models
        reference = resolve_model(cfg.ref_model, cfg.allow_pickle_weights, cfg.storage, key="ref_model")
        return RunModels(models.model, {"reference": reference})

    def trainer(self, cfg, models: RunModels) -> TrainerFactory:
        reference = models.extras.get("reference")
        return partial(
            preference_trainer,
            reference_fingerprint=(reference or models.model).fingerprint,
            reference_path=reference.path if reference else None,
        )

    def evaluation_models(self, models: RunModels) -> dict[str, str]:
        return {"reference": models.extras["reference"].path} if "reference" in models.extras else {}

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
        reference = models.extras.get("reference", models.model)
        return {
            "pref_loss": cfg.pref_loss,
            "ref_model": cfg.ref_model or "",
            "ref_model_fingerprint": reference.fingerprint,
        }


WORKFLOW = Preference()
