"""Every PEFT method on the real SmolLM2 and the demo task, each example config on its own budget.

For each example config in configs/ it records: trainable parameters (% of total), the model's
memory footprint (weights as loaded for training), its steps and seconds per optimizer step, the
first and last logged loss, the held-out generation metric after training (the config's own
held-out rows), and the optimizer that ran. Usage:
  .venv/bin/python benchmarks/methods_benchmark.py --write
  .venv/bin/python benchmarks/methods_benchmark.py --configs prefix prompt --steps 12
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import date
from pathlib import Path

from peftflow.config import load_config
from peftflow.data import prepare_dataset
from peftflow.evaluation.scoring import score_model
from peftflow.merge import merge
from peftflow.methods import get_method
from peftflow.models.load import load_base
from peftflow.models.resolve import resolve_model
from peftflow.training.run import run as train_run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["demo", "lora-dora", "qlora", "ia3", "prefix", "prompt", "ptuning"]


def footprint_mb(cfg, model_path: str) -> float:
    """Bytes of the weights as training loads them (4-bit for QLoRA), before any adapter."""
    return load_base(model_path, cfg).get_memory_footprint() / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    ap.add_argument("--steps", type=int, default=None, help="override every config's max_steps")
    ap.add_argument("--eval-samples", type=int, default=None, help="override every config's evaluation.max_samples")
    ap.add_argument("--write", action="store_true", help="write the table into docs/methods.md")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="peftflow-methods-bench-"))
    rows, fp32_mb = [], None
    for name in args.configs:
        cfg, _ = load_config(ROOT / "configs" / f"{name}.yaml")
        evaluation = cfg.evaluation.model_copy(update={"max_samples": args.eval_samples or cfg.evaluation.max_samples})
        cfg = cfg.model_copy(
            update={
                "max_steps": args.steps or cfg.max_steps,
                "save_steps": 10_000,
                "logging_steps": 2,
                "evaluation": evaluation,
            }
        )
        model = resolve_model(cfg.model_name_or_path)
        data = prepare_dataset(cfg, model.path)
        mb = footprint_mb(cfg, model.path)
        fp32_mb = fp32_mb or (mb if not cfg.quantization_bit else None)
        start = time.perf_counter()
        result = train_run(cfg, model.path, data.path, work / name)
        step_s = (time.perf_counter() - start) / result.steps
        tuned = result.adapter_dir
        if get_method(cfg).mergeable:
            tuned = merge(
                model.path, result.adapter_dir, work / name / "merged", cfg.merge_tolerance, train_cfg=cfg
            ).merged_dir
        score = score_model(name, tuned, data.path, cfg, base_model_dir=model.path).score
        first, last = result.loss_history[0][1], result.loss_history[-1][1]
        rows.append((name, result, mb, step_s, score, first, last))
        print(
            f"{name}: {100 * result.trainable_params / result.total_params:.3f}% trainable, {mb:.0f} MB, "
            f"{step_s:.2f} s/step, loss {first:.3f} -> {last:.3f}, score {score:.3f}, {result.optimizer_used}",
            flush=True,
        )

    table = [
        "| config | method | trainable % | footprint MB | vs fp32 | steps | s/step | loss first -> last | json_fields "
        "| optimizer ran |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r, mb, step_s, score, first, last in rows:
        table.append(
            f"| {name}.yaml | {r.method} | {100 * r.trainable_params / r.total_params:.3f} | {mb:.0f} | "
            f"{f'{mb / fp32_mb:.2f}x' if fp32_mb else '-'} | {r.steps} | {step_s:.2f} | {first:.3f} -> {last:.3f} | "
            f"{score:.3f} | {r.optimizer_used} |"
        )
    text = "\n".join(table)
    print(text)
    if args.write:
        command = " ".join(
            [
                "python benchmarks/methods_benchmark.py",
                *(["--configs", *args.configs] if args.configs != CONFIGS else []),
                *([f"--steps {args.steps}"] if args.steps else []),
                *([f"--eval-samples {args.eval_samples}"] if args.eval_samples else []),
                "--write",
            ]
        )
        doc = ROOT / "docs" / "methods.md"
        head = doc.read_text().split("<!-- benchmark -->")[0] if doc.exists() else "# PEFT methods\n\n"
        budget = f"{args.steps} steps each" if args.steps else "each config's own steps (max_steps)"
        doc.write_text(
            f"{head}<!-- benchmark -->\n\nMeasured on SmolLM2-135M-Instruct, demo task, {budget}, batch 8, "
            f"the config's held-out rows scored ({date.today()}):\n\n```\n.venv/bin/{command}\n```\n\n{text}\n"
        )


if __name__ == "__main__":
    main()
