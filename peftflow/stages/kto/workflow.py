"""A KTO run: the reference model (the trained model with its adapter off, or `ref_model`), the KTO
trainer, and the reference in the lineage."""

from __future__ import annotations

from functools import partial

from peftflow.stages.kto.trainer import kto_trainer
from peftflow.stages.reference import ReferenceWorkflow
from peftflow.stages.workflow import RunModels, TrainerFactory


class Kto(ReferenceWorkflow):
    def trainer(self, cfg, models: RunModels) -> TrainerFactory:
        fingerprint, path = self.reference_source(models)
        return partial(kto_trainer, reference_fingerprint=fingerprint, reference_path=path)


WORKFLOW = Kto()
