"""The outputs of the steps that train, merge and score (finetune and sweep-variant share them):
which task makes which file of the run dir (peftflow/run_dir.py), and the rule for their cache.

The rule: a step's cached result is only as good as the files it names. With a run store, a
missing output is fetched from it first (sealed and checked); a step whose output is neither here
nor there runs again. With a store, the cached results themselves live there too (any machine finds
them). Checkpoints go once the training they resume is no longer needed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from peftflow.config import RunConfig
from peftflow.data import PreparedData
from peftflow.evaluation.report import EvalReport
from peftflow.merge import MergeResult
from peftflow.mlflow_io.versions import ModelVersionRef
from peftflow.run_dir import RunDir
from peftflow.stages.workflow import RunModels
from peftflow.store import open_store, restore_output, run_key
from peftflow.training.resume import remove_checkpoints
from peftflow.training.run import TrainResult
from peftflow.training.stored import remove_stored_checkpoints
from tasks._policy import result_storage
from tasks.evaluate_models import evaluate_models
from tasks.merge_adapter import merge_adapter
from tasks.train_adapter import train_adapter


def unless_output_gone(config: RunConfig, step, output: Path):
    """`step` (a task) with its cache used only while `output` is here or fetched from the run store."""
    storage = result_storage(config)
    step = step.with_options(result_storage=storage) if storage else step
    if restore_output(config.storage, config.registry.name, output):
        return step
    return step.with_options(refresh_cache=True)


@dataclass(frozen=True)
class Trained:
    """The adapter and (when the method merges) the merged model, at this machine's run dir."""

    adapter: TrainResult
    merged: MergeResult | None

    @property
    def tuned_dir(self) -> str:
        """What is scored and published: the merged model, else the adapter (on its base)."""
        return self.merged.merged_dir if self.merged else self.adapter.adapter_dir


def train_and_merge(config: RunConfig, models: RunModels, data: PreparedData, key: str, run_id: str) -> Trained:
    """train-adapter -> run dir `adapter/`; merge-adapter -> `merged/` (when the method merges)."""
    run = RunDir.of(config, key)
    adapter = unless_output_gone(config, train_adapter, run.adapter)(config, models, data, key, run_id)
    adapter = replace(adapter, adapter_dir=str(run.adapter))  # cached on another machine: here now
    merged = None
    if config.should_merge:
        merged = unless_output_gone(config, merge_adapter, run.merged)(config, models.model, adapter, run_id)
        merged = replace(merged, merged_dir=str(run.merged))
    return Trained(adapter, merged)


def score(
    config: RunConfig,
    models: RunModels,
    trained: Trained,
    rival: ModelVersionRef | None,
    data: PreparedData,
    run_id: str,
    score_base: bool = True,
) -> EvalReport:
    """evaluate-models -> `eval_report.json` (base, fine-tune, rival), or for a sweep variant
    (`score_base=False`: the sweep scores the base once) `tuned_report.json` (the fine-tune)."""
    run = RunDir.holding(trained.adapter.adapter_dir)
    report = run.report(score_base)
    return unless_output_gone(config, evaluate_models, report)(
        config, models, trained.tuned_dir, rival, data, run_id, score_base=score_base
    )


def drop_checkpoints(config: RunConfig, run: RunDir) -> None:
    """The checkpoints (a retry's resume point) of a finished training, here and in the run store."""
    remove_checkpoints(run.path)
    if (store := open_store(config.storage)) is not None:
        remove_stored_checkpoints(store, run_key(config.registry.name, run.path))
