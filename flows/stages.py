"""The stage outputs of the flows that train (finetune, sweep-variant): a stage's cached result
is used only while the files it names exist here or in the run store; checkpoints go once the
training they resume is no longer needed."""

from __future__ import annotations

from pathlib import Path

from peftflow.config import RunConfig
from peftflow.store import open_store, restore_output, stage_key
from peftflow.training.resume import remove_checkpoints
from peftflow.training.stored import remove_stored_checkpoints
from tasks._policy import result_storage


def unless_cached_output_gone(config: RunConfig, stage, output: Path):
    """A cached result is only as good as the files it names: with a run store, a missing output
    is fetched from it first (sealed and checked); recompute when it is neither here nor there.
    With a store, the cached results themselves live there too (any machine finds them)."""
    storage = result_storage(config)
    stage = stage.with_options(result_storage=storage) if storage else stage
    if restore_output(config.storage, config.registry.name, output):
        return stage
    return stage.with_options(refresh_cache=True)


def drop_checkpoints(config: RunConfig, work: Path) -> None:
    """The checkpoints (a retry's resume point) of a finished training, here and in the run store."""
    remove_checkpoints(work)
    if (store := open_store(config.storage)) is not None:
        remove_stored_checkpoints(store, stage_key(config.registry.name, work))
