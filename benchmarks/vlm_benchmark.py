"""Held-out caption accuracy of a vision-language model before and after a LoRA + projector run.

Reads a run config (default configs/vlm-shapes.yaml: builtin:smollm2-llava on the built-in
coloured-shapes images), scores the base model, trains, merges, scores the merged model on the
same held-out images, and prints both with the trainable parameters per part. Usage:
  .venv/bin/python benchmarks/vlm_benchmark.py [--config configs/vlm-shapes.yaml] [--steps N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from peftflow.config import load_config
from peftflow.data import prepare_dataset
from peftflow.evaluation.scoring import score_model
from peftflow.merge import merge
from peftflow.models.resolve import resolve_model
from peftflow.summary import trainable_parts_line
from peftflow.training.run import run as train_run

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "vlm-shapes.yaml"))
    ap.add_argument("--steps", type=int, default=None, help="override max_steps")
    args = ap.parse_args()

    cfg, _ = load_config(args.config)
    if args.steps:
        cfg = cfg.model_copy(update={"max_steps": args.steps, "save_steps": 10_000})
    model = resolve_model(cfg.model_name_or_path)
    data = prepare_dataset(cfg, model.path)
    work = Path(tempfile.mkdtemp(prefix="peftflow-vlm-bench-"))
    metric = cfg.evaluation.metric

    before = score_model("base", model.path, data.path, cfg)
    print(
        f"before: held-out {metric} {before.score:.3f} (loss {before.loss:.3f}) on {len(before.examples)} images; "
        f"e.g. {before.examples[0]['prediction']!r} for {before.examples[0]['reference']!r}",
        flush=True,
    )
    start = time.perf_counter()
    result = train_run(cfg, model.path, data.path, work)
    seconds = time.perf_counter() - start
    merged = merge(model.path, result.adapter_dir, work / "merged", cfg.merge_tolerance)
    after = score_model("tuned", merged.merged_dir, data.path, cfg)
    print(
        f"trained {result.steps} steps in {seconds:.0f} s ({seconds / result.steps:.2f} s/step), loss "
        f"{result.loss_history[0][1]:.3f} -> {result.loss_history[-1][1]:.3f}; "
        f"{trainable_parts_line(result.trainable_by_part, result.total_params)}"
    )
    print(
        f"after:  held-out {metric} {after.score:.3f} (loss {after.loss:.3f}) on {len(after.examples)} images; "
        f"e.g. {after.examples[0]['prediction']!r} for {after.examples[0]['reference']!r}"
    )
    wrong = [e for e in after.examples if not e["score"]]
    if wrong:
        print("misses: " + "; ".join(f"{e['prediction']!r} for {e['reference']!r}" for e in wrong[:6]))


if __name__ == "__main__":
    main()
