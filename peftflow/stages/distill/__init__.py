"""`stage: distill`: the student (the base model, or the teacher pruned to student_layers) learns the
teacher's output distribution. `teacher.py` (teacher and student as plain local models), `cache.py`
(the teacher's top-k logits), `labelling.py` (teacher-answered prompts), `trainer.py` (the KD
trainer), `workflow.py` (what a distillation run does); its config keys are `keys.py`'s; the KD
loss is in peftflow.losses."""

from __future__ import annotations

from peftflow.methods import METHODS, names_with
from peftflow.stages.base import FormGroup, Stage, in_one_process, no_evaluation_during_training
from peftflow.stages.distill.keys import DistillKeys


def check(cfg) -> None:
    if not cfg.teacher:
        raise ValueError("stage: distill needs a teacher (a model reference)")
    if cfg.student_layers and cfg.model_name_or_path != type(cfg).model_fields["model_name_or_path"].default:
        raise ValueError("student_layers and model_name_or_path both name the student; keep one")
    if not METHODS[cfg.finetuning_type].traits.distill_student:
        raise ValueError(
            f"finetuning_type '{cfg.finetuning_type}' cannot be a distillation student "
            f"(students: {', '.join(names_with('distill_student'))})"
        )
    in_one_process(cfg, "distill", "the teacher and its cache are not shared across torchrun ranks")
    no_evaluation_during_training(cfg, "distill", "the teacher's logits are cached for the training rows only")
    if cfg.kd_direction == "reverse" and cfg.teacher_topk > 0:
        raise ValueError("kd_direction: reverse needs the whole teacher distribution; set teacher_topk to 0 or -1")


def named_after(cfg) -> tuple[str, str]:
    return (cfg.teacher, "-student") if cfg.teacher else (cfg.model_name_or_path, "")


STAGE = Stage(
    "distill",
    "the student (the base model, or the teacher pruned to student_layers) learns the teacher's "
    "output distribution (see the Distillation group)",
    keys=DistillKeys,
    form_group=FormGroup("distillation", "Distillation", "Stage distill: the teacher and the KL term."),
    check=check,
    sweepable=False,
    models_by_content=("teacher", "teacher_adapter"),
    named_after=named_after,
)
