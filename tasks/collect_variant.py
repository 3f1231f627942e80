"""Read back what a sweep variant's run left (peftflow/sweep/outcome.py), from the run store
when it trained on another machine."""

from dataclasses import replace
from pathlib import Path

from prefect import task

from peftflow.config import RunConfig
from peftflow.errors import UserError
from peftflow.evaluation.report import EvalReport
from peftflow.merge import MergeResult
from peftflow.store import restore_output
from peftflow.sweep.outcome import OUTCOME_FILE, TUNED_REPORT_FILE, read_outcome
from peftflow.training.run import TrainResult


@task(name="collect-variant")
def collect_variant(config: RunConfig, work: str, with_models: bool = False
                    ) -> tuple[str, TrainResult, MergeResult | None, EvalReport]:
    """(MLflow run id, train result, merge result, tuned report); `with_models`: the adapter and
    merged model too (the winner, to publish)."""
    work = Path(work)
    _restore(config, work / OUTCOME_FILE)
    _restore(config, work / TUNED_REPORT_FILE)
    run_id, train, merged, report = read_outcome(work)
    # Trained on another machine: the files are here now, under this machine's stage dir.
    train = replace(train, adapter_dir=str(work / "adapter"))
    merged = replace(merged, merged_dir=str(work / "merged")) if merged else None
    if with_models:
        _restore(config, work / "adapter")
        if merged:
            _restore(config, work / "merged")
    return run_id, train, merged, report


def _restore(config: RunConfig, path: Path) -> None:
    if not restore_output(config.storage, config.registry.name, path):
        raise UserError(f"{path}: the sweep variant's output is neither here nor in a run store; a sweep whose "
                        "variants train on other machines needs `storage:` (a run store every machine reaches)")
