"""Does distillation beat plain fine-tuning for a pruned student? Same student, steps and data.

teacher  = SmolLM2-135M-Instruct + LoRA trained on the demo task, merged
student  = the teacher pruned to half depth (15 of 30 layers, evenly spaced)
CE-only  = the student fine-tuned with LoRA on the labels
KD       = the student fine-tuned with LoRA on kd_ratio * T^2 * KL + (1 - kd_ratio) * CE

Writes the table to docs/distillation.md (with --write). Usage:
  .venv/bin/python benchmarks/distill_benchmark.py --steps 30 --write
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from peftflow import merge
from peftflow.config import RunConfig, demo_config
from peftflow.data import prepare_dataset
from peftflow.distill.teacher import prune_layers
from peftflow.evaluation.scoring import compare
from peftflow.models.resolve import resolve_model
from peftflow.training.run import run as train_run

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher-steps", type=int, default=40)
    ap.add_argument("--steps", type=int, default=30, help="student optimizer steps, both arms")
    ap.add_argument("--student-layers", type=int, default=15)
    ap.add_argument("--write", action="store_true", help="write docs/distillation.md")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="peftflow-distill-bench-"))
    base = resolve_model("builtin:smollm2-135m-instruct")
    cfg = demo_config().model_copy(update={"max_steps": args.teacher_steps, "save_steps": 1000})
    data = prepare_dataset(cfg, base.path)

    t0 = time.perf_counter()
    teacher_adapter = train_run(cfg, base.path, data.path, work / "teacher").adapter_dir
    teacher = merge.merge(base.path, teacher_adapter, work / "teacher" / "merged", tolerance=1e-3).merged_dir
    student = str(prune_layers(teacher, args.student_layers, work / "student-init"))

    common = dict(max_steps=args.steps, learning_rate=1e-3, logging_steps=5, save_steps=1000, lora_rank=16,
                  val_size=cfg.val_size, evaluation=cfg.evaluation)
    arms = {
        "CE only": RunConfig(model_name_or_path=student, **common),
        "KD": RunConfig(stage="distill", teacher=teacher, model_name_or_path=student,
                        kd_ratio=0.5, kd_temperature=2.0, teacher_topk=64, **common),
    }
    models = {"teacher": teacher, "student before": student}
    seconds = {}
    for label, arm in arms.items():
        start = time.perf_counter()
        out = work / label.replace(" ", "-")
        result = train_run(arm, student, data.path, out, teacher_path=teacher if arm.stage == "distill" else None)
        models[label] = merge.merge(student, result.adapter_dir, out / "merged", tolerance=1e-3).merged_dir
        seconds[label] = time.perf_counter() - start

    report = compare(models, data.path, cfg, work / "report.json")
    teacher_score = report.models["teacher"].score
    rows = ["| model | json_fields | held-out loss | teacher retention | train seconds |", "|---|---|---|---|---|"]
    for label, s in report.models.items():
        retention = f"{s.score / teacher_score:.3f}" if teacher_score else "n/a"
        rows.append(f"| {label} | {s.score:.3f} | {s.loss:.4f} | {retention} | {seconds.get(label, 0):.0f} |")
    table = "\n".join(rows)
    print(table)
    print(f"total {time.perf_counter() - t0:.0f} s; work dir {work}")
    if args.write:
        write_doc(table, args)


def write_doc(table: str, args) -> None:
    command = (f".venv/bin/python benchmarks/distill_benchmark.py --teacher-steps {args.teacher_steps} "
               f"--steps {args.steps} --student-layers {args.student_layers} --write")
    doc = ROOT / "docs" / "distillation.md"
    text = doc.read_text() if doc.exists() else ""
    marker = "<!-- benchmark -->"
    body = f"{marker}\n\nMeasured with:\n\n```\n{command}\n```\n\n{table}\n"
    doc.write_text(text.split(marker)[0] + body if marker in text else text + "\n" + body)


if __name__ == "__main__":
    main()
