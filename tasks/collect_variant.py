"""Read back what a sweep variant's run left (peftflow/sweep/outcome.py), from the run store
when it trained on another machine."""

from dataclasses import replace
from pathlib import Path

from prefect import task

from peftflow.config import RunConfig
from peftflow.errors import UserError
from peftflow.evaluation.report import EvalReport
from peftflow.merge import MergeResult
from peftflow.run_dir import RunDir
from peftflow.store import restore_output
from peftflow.sweep.outcome import read_outcome
from peftflow.training.run import TrainResult


@task(name="collect-variant")
def collect_variant(
    config: RunConfig, work: str, with_models: bool = False
) -> tuple[str, TrainResult, MergeResult | None, EvalReport]:
    """(MLflow run id, train result, merge result, tuned report); `with_models`: the adapter and
    merged model too (the winner, to publish)."""
    run = RunDir(Path(work))
    _restore(config, run.variant_outcome)
    _restore(config, run.tuned_report)
    run_id, train, merged, report = read_outcome(run.path)
    # Trained on another machine: the files are here now, under this machine's run dir.
    train = replace(train, adapter_dir=str(run.adapter))
    merged = replace(merged, merged_dir=str(run.merged)) if merged else None
    if with_models:
        _restore(config, run.adapter)
        if merged:
            _restore(config, run.merged)
    return run_id, train, merged, report


def _restore(config: RunConfig, path: Path) -> None:
    if not restore_output(config.storage, config.registry.name, path):
        raise UserError(
            f"{path}: the sweep variant's output is neither here nor in a run store; a sweep whose "
            "variants train on other machines needs `storage:` (a run store every machine reaches)"
        )
