"""The config keys of `stage: distill`: a pydantic model `RunConfig` inherits (so each key is declared
once, here) and the stage's `options` are read from. Imports pydantic only: the config reads it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class DistillKeys(BaseModel):
    """The teacher, the student and the KL term; the form's Distillation group, in this order."""

    # fmt: off
    # A table, one or two lines a key, as RunConfig's (config/run.py).
    teacher: str | None = Field(None, title="Distillation: teacher",
                                description="Teacher model: builtin:NAME, a local dir, a hub id, models:/NAME@ALIAS or "
                                            "models:/NAME/VERSION.")
    teacher_adapter: str | None = Field(None, title="Distillation: teacher adapter",
                                        description="A PEFT adapter dir applied to the teacher.")
    student_layers: int | None = Field(None, gt=0, title="Distillation: student layers",
                                       description="Student = the teacher pruned to N evenly spaced layers.")
    kd_temperature: float = Field(2.0, gt=0.0, title="Distillation: temperature",
                                  description="Softmax temperature of teacher and student in the KL term.")
    kd_ratio: float = Field(0.5, ge=0.0, le=1.0, title="Distillation: KL weight",
                            description="Weight of the KL term; 1 - kd_ratio weighs cross-entropy.")
    kd_direction: Literal["forward", "reverse"] = Field("forward", title="Distillation: KL direction",
                                                        description="forward: KL(teacher||student); reverse: "
                                                                    "KL(student||teacher).")
    kd_chunk_size: int = Field(256, gt=0, title="Distillation: chunk size",
                               description="Supervised positions per logits chunk.")
    teacher_topk: int = Field(0, ge=-1, title="Distillation: cached teacher top-k",
                              description="0: live teacher. k > 0: cache the teacher's top-k logits per position "
                                          "(approximate). -1: cache all (exact).")
    kd_unlabeled_dataset: str | None = Field(
        None, title="Distillation: prompts for the teacher",
        description="Datasets in dataset_dir (comma-separated) of prompts without answers: the teacher answers them "
                    "and the student trains on those answers too.")
    kd_label_temperature: float = Field(0.0, ge=0.0, title="Distillation: labelling temperature",
                                        description="0: the teacher answers greedily; > 0: sampled at this "
                                                    "temperature.")
    kd_label_max_new_tokens: int = Field(256, gt=0, title="Distillation: labelling max new tokens",
                                         description="Longest answer the teacher writes for a prompt.")
    # fmt: on

    @property
    def kd_unlabeled_names(self) -> list[str]:
        return [n.strip() for n in (self.kd_unlabeled_dataset or "").split(",") if n.strip()]
