"""What a sweep variant's run leaves for the sweep: `sweep_variant.json` (its MLflow run, train and
merge results) beside `tuned_report.json` (its held-out scores) in its run dir. Files, not
Prefect results: a variant run from a deployment may train on another machine; with a run store
the sweep fetches them from there."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from peftflow.evaluation.report import EvalReport
from peftflow.merge import MergeResult
from peftflow.run_dir import RunDir
from peftflow.training.run import TrainResult


def write_outcome(work: Path, run_id: str, train: TrainResult, merged: MergeResult | None) -> Path:
    path = RunDir(Path(work)).variant_outcome
    path.write_text(
        json.dumps({"run_id": run_id, "train": asdict(train), "merged": asdict(merged) if merged else None}, indent=1)
    )
    return path


def read_outcome(work: Path) -> tuple[str, TrainResult, MergeResult | None, EvalReport]:
    """(MLflow run id, train result, merge result or None, the tuned model's report)."""
    run = RunDir(Path(work))
    raw = json.loads(run.variant_outcome.read_text())
    train = raw["train"] | {"loss_history": tuple(tuple(p) for p in raw["train"]["loss_history"])}
    merged = MergeResult(**raw["merged"]) if raw["merged"] else None
    return raw["run_id"], TrainResult(**train), merged, EvalReport.from_json(run.tuned_report)
