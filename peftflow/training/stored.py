"""Checkpoints in the run store: each one uploaded (sealed by its manifest) as soon as the Trainer
has written it, and the newest sealed one fetched before training on a machine that has none as
new, so a run killed after checkpoint N resumes from N on another machine. The resume itself, and
its checks, are `resume.py`'s: a fetched checkpoint is one more local checkpoint."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from transformers import TrainerCallback

from peftflow.store import RunStore
from peftflow.training.resume import last_complete_checkpoint

log = logging.getLogger("peftflow.train")
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def _step(name: str) -> int | None:
    m = _CHECKPOINT.fullmatch(name)
    return int(m[1]) if m else None


class StoreCheckpoints(TrainerCallback):
    """After each save (rank 0): upload the checkpoint, then drop the stored ones the Trainer's
    rotation (`save_total_limit`) removed locally. Training waits for the upload: a checkpoint
    counts as saved only once it is in the store."""

    def __init__(self, store: RunStore, key: str):
        self.store, self.key = store, f"{key}/checkpoints"

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        local = Path(args.output_dir)
        self.store.put_dir(local / f"checkpoint-{state.global_step}", f"{self.key}/checkpoint-{state.global_step}")
        kept = {p.name for p in local.glob("checkpoint-*")}
        for name in self.store.children(self.key):
            if _step(name) is not None and name not in kept:
                self.store.remove(f"{self.key}/{name}")


def fetch_checkpoint(store: RunStore, key: str, checkpoints_dir: str | Path) -> int | None:
    """Download the newest sealed checkpoint of `key` that is newer than every complete local
    one; returns its step, or None when the local disk is as far on (or the store has none).
    An unsealed or damaged stored checkpoint is skipped for the next older one."""
    checkpoints_dir = Path(checkpoints_dir)
    local = last_complete_checkpoint(checkpoints_dir, set_aside=False)
    local_step = _step(Path(local).name) if local else -1
    stored = sorted((s for n in store.children(f"{key}/checkpoints") if (s := _step(n)) is not None), reverse=True)
    for step in stored:
        if step <= local_step:
            return None
        if store.get_dir(f"{key}/checkpoints/checkpoint-{step}", checkpoints_dir / f"checkpoint-{step}"):
            log.info("resuming from checkpoint-%d of the run store %s", step, store.url)
            return step
        log.warning("stored checkpoint-%d is not sealed or does not match its manifest; skipped", step)
    return None


def remove_stored_checkpoints(store: RunStore, key: str) -> None:
    """A finished run's stored scratch space (the counterpart of resume.remove_checkpoints)."""
    store.remove(f"{key}/checkpoints")
