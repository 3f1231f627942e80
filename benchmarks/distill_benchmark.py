"""Does distillation beat plain fine-tuning? Two comparisons, one invocation, paired on held-out rows.

teacher = SmolLM2-135M-Instruct + LoRA trained on the demo task, merged
student = the teacher pruned to half depth (15 of 30 layers, evenly spaced), trained as the arm says

1. Same data: the CE-only student and the KD student (kd_ratio * T^2 * KL + (1 - kd_ratio) * CE),
   same student, rows and steps.
2. Teacher-labelled data: the KD student on `--labelled` rows alone, and on those rows plus
   `--prompts` prompts without answers that the teacher answered (kd_unlabeled_dataset).
3. Labeller errors: CE only vs KD on `--labelled` rows of which about `--errors` have one field
   copied from another order (a labeller's slip), the held-out rows left as they are.

Each arm is scored by json_fields on the same held-out rows; the table gives each gain's mean and
its 95% paired bootstrap interval over those rows. Writes docs/distillation.md with --write. Usage:
  .venv/bin/python benchmarks/distill_benchmark.py --write
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from peftflow import merge
from peftflow.builtin.datasets import PROMPT_SEED, make_rows
from peftflow.config import RunConfig, demo_config
from peftflow.data import prepare_dataset
from peftflow.data.prepare import split_rows
from peftflow.evaluation.scoring import score_model
from peftflow.models.resolve import resolve_model
from peftflow.promotion import paired_bootstrap
from peftflow.stages import get_workflow
from peftflow.stages.distill.labelling import teacher_labelled
from peftflow.stages.distill.teacher import prune_layers
from peftflow.stages.workflow import RunModels
from peftflow.training.run import run as train_run

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}
ORDERS_TRAIN_ROWS = 544  # part 1's training rows, beside the held-out ones


def write_datasets(root: Path, held_out: int, labelled: int, prompts: int, errors: float) -> Path:
    """orders: every labelled row; few: `labelled` of them (the first ones drawn); few_errors: few
    with labeller errors in its training rows, the same held-out rows; prompts: other orders
    without their answers (demo_order_prompts, when 512)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = make_rows(held_out + ORDERS_TRAIN_ROWS, seed=0)
    few = rows[: held_out + labelled]
    train_rows, _ = split_rows(len(few), RunConfig(dataset="few", val_size=held_out))
    asked = [{k: v for k, v in r.items() if k != "output"} for r in make_rows(prompts, seed=PROMPT_SEED)]
    data = {"orders": rows, "few": few, "few_errors": with_labeller_errors(few, train_rows, errors), "prompts": asked}
    for name, part in data.items():
        (root / f"{name}.json").write_text(json.dumps(part))
    info = {name: {"file_name": f"{name}.json", "columns": COLUMNS} for name in data}
    (root / "dataset_info.json").write_text(json.dumps(info))
    return root


def with_labeller_errors(rows: list[dict], train_rows: list[int], share: float, seed: int = 7) -> list[dict]:
    """`rows` where about `share` of `train_rows` have one field of their answer copied from
    another training row's (a labeller's copy-paste slip); held-out rows stay as they are."""
    rng, out = random.Random(seed), [dict(r) for r in rows]
    for i in train_rows:
        if rng.random() < share:
            donor = rng.choice([j for j in train_rows if j != i])
            record, other = json.loads(out[i]["output"]), json.loads(rows[donor]["output"])
            field = rng.choice(sorted(record))
            out[i]["output"] = json.dumps({**record, field: other[field]})  # sometimes the same value: no error
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher-steps", type=int, default=40)
    ap.add_argument("--steps", type=int, default=100, help="student optimizer steps, every arm")
    ap.add_argument("--student-layers", type=int, default=15)
    ap.add_argument("--held-out", type=int, default=200, help="held-out rows every arm is scored on")
    ap.add_argument("--labelled", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument(
        "--errors", type=float, default=0.25, help="share of the labelled rows with a labeller error (part 3)"
    )
    ap.add_argument("--parts", default="1,2,3", help="comparisons to run (numbers above); --write needs all")
    ap.add_argument("--write", action="store_true", help="write docs/distillation.md")
    args = ap.parse_args()

    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="peftflow-distill-bench-"))
    data_dir = write_datasets(work / "data", args.held_out, args.labelled, args.prompts, args.errors)
    base = resolve_model("builtin:smollm2-135m-instruct")
    evaluation = {**demo_config().evaluation.model_dump(), "max_samples": args.held_out}
    tcfg = demo_config().model_copy(update={"max_steps": args.teacher_steps, "save_steps": 1000})
    teacher_adapter = train_run(tcfg, base.path, prepare_dataset(tcfg, base.path).path, work / "teacher").adapter_dir
    teacher = merge.merge(base.path, teacher_adapter, work / "teacher" / "merged", tolerance=1e-3).merged_dir
    student = str(prune_layers(teacher, args.student_layers, work / "student-init"))

    # The student's recipe (docs/distillation.md says why): full fine-tuning, the same for every arm.
    common = dict(
        model_name_or_path=student,
        dataset_dir=str(data_dir),
        val_size=args.held_out,
        evaluation=evaluation,
        finetuning_type="full",
        learning_rate=1e-4,
        max_steps=args.steps,
        logging_steps=10,
        save_steps=10_000,
    )
    kd = dict(stage="distill", teacher=teacher, kd_ratio=0.5, kd_temperature=2.0, teacher_topk=64)
    few = f"{args.labelled} labelled rows"
    parts = {
        "Same data: CE only vs KD": {
            "CE only": RunConfig(dataset="orders", **common),
            "KD": RunConfig(dataset="orders", **kd, **common),
        },
        "Teacher-labelled data (KD both)": {
            f"KD, {few}": RunConfig(dataset="few", **kd, **common),
            f"KD, {few} + {args.prompts} teacher-labelled": RunConfig(
                dataset="few", kd_unlabeled_dataset="prompts", **kd, **common
            ),
        },
        f"Labeller errors ({few}, about {args.errors:.0%} with one field wrong): CE only vs KD": {
            "CE only": RunConfig(dataset="few_errors", **common),
            "KD": RunConfig(dataset="few_errors", **kd, **common),
        },
    }
    chosen = [int(n) for n in args.parts.split(",")]
    tables = [
        compare(title, arms, teacher, student, work / f"part-{n}")
        for n, (title, arms) in enumerate(parts.items(), 1)
        if n in chosen
    ]
    print("\n\n".join(tables))
    print(f"total {time.perf_counter() - t0:.0f} s; work dir {work}")
    if args.write and len(tables) < len(parts):
        print("docs/distillation.md not written: --write needs every part")
    elif args.write:
        write_doc("\n\n".join(tables), args)


def compare(title: str, arms: dict[str, RunConfig], teacher: str, student: str, work: Path) -> str:
    """Train two arms (baseline first), score them with the teacher and the untrained student on
    the held-out rows they share; a table with the gain and its 95% paired bootstrap interval."""
    scores, trained = {}, {}
    for label, cfg in arms.items():
        start = time.perf_counter()
        data = prepare_dataset(cfg, student)
        if cfg.kd_unlabeled_dataset:
            data = teacher_labelled(cfg, resolve_model(teacher), student, data)
        labelling = time.perf_counter() - start
        if not scores:
            scores = {
                name: score_model(name, model, data.path, cfg)
                for name, model in (("teacher", teacher), ("student before", student))
            }
        start = time.perf_counter()
        out = work / label.replace(" ", "-").replace(",", "")
        models = RunModels(resolve_model(student), {"teacher": resolve_model(teacher)})
        result = train_run(cfg, student, data.path, out, trainer_factory=get_workflow(cfg).trainer(cfg, models))
        trained[label] = (data.train_rows, labelling + time.perf_counter() - start)
        scores[label] = score_model(label, result.adapter_dir, data.path, cfg)
        print(
            f"{label}: {data.train_rows} train rows, json_fields {scores[label].score:.3f}, "
            f"loss {scores[label].loss:.4f}, {trained[label][1]:.0f} s",
            flush=True,
        )
    held_out = len(scores["teacher"].examples)
    lines = [
        f"**{title}** ({held_out} held-out rows)",
        "",
        "| model | train rows | json_fields | held-out loss | teacher retention | seconds (labels + train) |",
        "|---|---|---|---|---|---|",
    ]
    for label, s in scores.items():
        n, seconds = trained.get(label, ("-", 0))
        lines.append(
            f"| {label} | {n} | {s.score:.3f} | {s.loss:.4f} | {s.score / scores['teacher'].score:.3f} | {seconds:.0f} "
            "|"
        )
    worse, better = arms
    mean, lower, upper = paired_bootstrap(
        [e["score"] for e in scores[better].examples],
        [e["score"] for e in scores[worse].examples],
        samples=10_000,
        confidence=0.95,
    )
    lines += [
        "",
        f"{better} vs {worse}: json_fields gain {mean:+.3f}, 95% paired bootstrap interval "
        f"[{lower:+.3f}, {upper:+.3f}] over {held_out} rows ({'excludes' if lower > 0 else 'includes'} zero).",
    ]
    return "\n".join(lines)


def write_doc(table: str, args) -> None:
    command = (
        f".venv/bin/python benchmarks/distill_benchmark.py --teacher-steps {args.teacher_steps} "
        f"--steps {args.steps} --student-layers {args.student_layers} --held-out {args.held_out} "
        f"--labelled {args.labelled} --prompts {args.prompts} --errors {args.errors} --write"
    )
    doc = ROOT / "docs" / "distillation.md"
    text = doc.read_text() if doc.exists() else ""
    marker = "<!-- benchmark -->"
    body = f"{marker}\n\nMeasured with:\n\n```\n{command}\n```\n\n{table}\n"
    doc.write_text(text.split(marker)[0] + body if marker in text else text + "\n" + body)


if __name__ == "__main__":
    main()
