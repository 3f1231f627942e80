"""A distillation run: the teacher beside the student it trains, teacher-answered prompts added to
the training rows, the KD trainer, the teacher scored too, and the teacher in the lineage."""

from __future__ import annotations

from functools import partial

from peftflow.data import PreparedData
from peftflow.evaluation.report import EvalReport
from peftflow.stages.distill.labelling import labels_fingerprint, teacher_labelled
from peftflow.stages.distill.teacher import resolve_student, resolve_teacher
from peftflow.stages.distill.trainer import distill_trainer
from peftflow.stages.workflow import RunModels, TrainerFactory, Workflow


class Distillation(Workflow):
    def resolve(self, cfg) -> RunModels:
        teacher = resolve_teacher(cfg)
        return RunModels(resolve_student(cfg, teacher), {"teacher": teacher})

    def check_inputs(self, cfg) -> None:
        if cfg.kd_unlabeled_dataset:  # the teacher's prompts read (not yet answered): a bad row fails here
            from peftflow.data.prepare import prompt_sources, read_prompts

            read_prompts(cfg, prompt_sources(cfg))

    def adds_rows(self, cfg) -> bool:
        return bool(cfg.kd_unlabeled_dataset)

    def training_data(self, cfg, models: RunModels, data: PreparedData) -> tuple[PreparedData, str]:
        if not cfg.kd_unlabeled_dataset:
            return data, ""
        labelled = teacher_labelled(cfg, models.extras["teacher"], models.model.path, data)
        return labelled, (
            f"**Teacher-labelled** `{cfg.kd_unlabeled_dataset}` fingerprint `{labelled.fingerprint}`: "
            f"{labelled.train_rows - data.train_rows} teacher-answered rows added to {data.train_rows} "
            f"labelled train rows; {labelled.eval_rows} held out (unchanged)."
        )

    def data_fingerprint(self, cfg, models: RunModels, data: PreparedData) -> str:
        # With teacher-labelled prompts the run trains on more rows: their fingerprint, not generated here.
        if not cfg.kd_unlabeled_dataset:
            return data.fingerprint
        return labels_fingerprint(cfg, models.extras["teacher"], models.model.path, data)

    def trainer(self, cfg, models: RunModels) -> TrainerFactory:
        return partial(distill_trainer, teacher_path=models.extras["teacher"].path)

    def evaluation_models(self, models: RunModels) -> dict[str, str]:
        return {"teacher": models.extras["teacher"].path}

    def summary_notes(self, report: EvalReport) -> list[str]:
        return [f"student keeps {report.retention():.1%} of the teacher's {report.metric} (teacher retention)"]

    def lineage_tags(self, cfg, models: RunModels) -> dict[str, str]:
        teacher = models.extras["teacher"]
        tags = {"base_model": f"{cfg.teacher} pruned to {cfg.student_layers} layers"} if cfg.student_layers else {}
        return tags | {
            "teacher": cfg.teacher,
            "teacher_fingerprint": teacher.fingerprint,
            "teacher_adapter": cfg.teacher_adapter or "",
            "student_layers": str(cfg.student_layers or ""),
        }


WORKFLOW = Distillation()
