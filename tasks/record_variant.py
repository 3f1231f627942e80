"""What a sweep variant's run leaves for the sweep that started it (peftflow/sweep/outcome.py)."""

from pathlib import Path

from prefect import task

from peftflow.config import RunConfig
from peftflow.merge import MergeResult
from peftflow.store import save_output
from peftflow.sweep.outcome import write_outcome
from peftflow.training.run import TrainResult


@task(name="record-variant")
def record_variant(config: RunConfig, work: str, run_id: str, train: TrainResult, merged: MergeResult | None) -> str:
    """`sweep_variant.json` in the run dir, and in the run store when there is one."""
    path = write_outcome(Path(work), run_id, train, merged)
    save_output(config.storage, config.registry.name, path)
    return str(path)
