"""Resume a killed run from its last complete checkpoint, and prove it continued rather than restarted."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

from peftflow.errors import UserError
from peftflow.run_dir import RunDir

log = logging.getLogger("peftflow.train")

# After a resume the first logged loss must be near the last one logged before the crash;
# a run that silently restarted from scratch shows the untrained loss instead.
RESUME_LOSS_TOLERANCE = 0.5
# ... and it must not give back most of the progress made before the checkpoint (a restart that
# reloads the step counter but not the adapter weights: the known PEFT trap).
RESUME_PROGRESS_KEPT = 0.5
# What a checkpoint needs to resume exactly: trainer_state.json is written last, so a checkpoint
# killed mid-save lacks it (or holds half of it).
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")


def remove_checkpoints(output_dir: str | Path) -> bool:
    """Delete a finished run's scratch space (`<output_dir>/checkpoints`: weights plus optimizer
    state per checkpoint); adapter/, merged/ and the reports stay. Call it only once the result is
    safely published: until then the checkpoints are what a retry resumes from."""
    scratch = RunDir(Path(output_dir)).checkpoints
    if not scratch.is_dir():
        return False
    shutil.rmtree(scratch)
    log.info("removed scratch space %s", scratch)
    return True


def last_complete_checkpoint(checkpoints_dir: Path, set_aside: bool = True) -> str | None:
    """The newest checkpoint that can be resumed from. A checkpoint cut short by a kill (no or
    unreadable trainer_state.json, no optimizer or scheduler state) is never resumed: Trainer would
    otherwise load it and fail, or silently start the optimizer afresh. With `set_aside` it is also
    renamed out of the way; under torchrun only rank 0 renames, the other ranks skip over it."""
    if not checkpoints_dir.is_dir():
        return None
    candidates = sorted(
        (p for p in checkpoints_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for checkpoint in candidates:
        if _complete(checkpoint):
            return str(checkpoint)
        if set_aside:
            aside = checkpoint.with_name(f"incomplete-{checkpoint.name}-{time.time_ns()}")
            why = "saved with save_only_model" if _weights_only(checkpoint) else "killed while saving?"
            log.warning("checkpoint %s is incomplete (%s); set aside as %s", checkpoint, why, aside.name)
            checkpoint.rename(aside)
    return None


def resumes(cfg) -> bool:
    """Whether the run's own checkpoints can resume it: `save_strategy: no` saves none, and a
    `save_only_model` checkpoint has no optimizer, scheduler or RNG state (resuming from it would
    restart Adam and the schedule: a silent partial restart), so such a run restarts from scratch."""
    return cfg.save_strategy != "no" and not cfg.save_only_model


def starting_checkpoint(cfg, checkpoints_dir: Path, set_aside: bool = True) -> str | None:
    """The checkpoint this run resumes from: the run's own last complete one (when it `resumes`);
    else an explicit `resume_from_checkpoint` path (checked complete). `resume_from_checkpoint: true`
    insists on the run's own and is refused when there is none."""
    own = last_complete_checkpoint(checkpoints_dir, set_aside) if resumes(cfg) else None
    explicit = cfg.resume_from_checkpoint
    if explicit is True and own is None:
        raise UserError(f"resume_from_checkpoint: true, but {checkpoints_dir} holds no complete checkpoint")
    if own is None and isinstance(explicit, str):
        check_resume_source(cfg)
        return explicit
    return own


def check_resume_source(cfg) -> None:
    """An explicit `resume_from_checkpoint` path must be a checkpoint that resumes exactly (UserError)."""
    path = cfg.resume_from_checkpoint
    if not isinstance(path, str):
        return
    if not Path(path).is_dir():
        raise UserError(f"resume_from_checkpoint: {path}: no such checkpoint folder")
    if not _complete(Path(path)):
        missing = [f for f in CHECKPOINT_FILES if not (Path(path) / f).is_file()]
        what = f"it lacks {', '.join(missing)}" if missing else "its trainer_state.json is unreadable"
        raise UserError(
            f"resume_from_checkpoint: {path} is not a complete checkpoint ({what}); it cannot resume exactly"
        )


def _weights_only(checkpoint: Path) -> bool:
    return (checkpoint / "trainer_state.json").is_file() and not (checkpoint / "optimizer.pt").is_file()


def _complete(checkpoint: Path) -> bool:
    if not all((checkpoint / f).is_file() for f in CHECKPOINT_FILES):
        return False
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    except (ValueError, KeyError):
        return False
    return True


def first_loss(checkpoint: str) -> float | None:
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    return losses[0] if losses else None


def loss_before(checkpoint: str) -> tuple[int, float] | None:
    """(checkpoint step, last loss logged up to it) saved with a checkpoint."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    return state["global_step"], (losses[-1] if losses else math.nan)


class ResumeError(RuntimeError):
    """A resumed run that did not continue where the checkpoint left off."""


def check_resume(
    before: tuple[int, float],
    history: tuple[tuple[int, float], ...],
    first_loss: float | None = None,
    first_new_step: int | None = None,
) -> None:
    """Fail loudly when a resume looks like a restart from scratch.

    `before` is (step, last loss logged) of the checkpoint, `history` the (step, loss) log after
    training (it includes the checkpoint's own entries), `first_loss` the first loss the run ever
    logged, `first_new_step` the first optimizer step this process finished. Three symptoms: the
    step counter did not continue at step + 1, the loss jumped well above the last one, or it gave
    back most of the progress made between the first logged loss and the checkpoint."""
    step, loss = before
    if first_new_step is not None and first_new_step != step + 1:
        raise ResumeError(
            f"resume from step {step} restarted the step counter: the first step trained "
            f"after resuming was {first_new_step}, not {step + 1}"
        )
    after = [(s, logged) for s, logged in history if s > step]
    if not after or math.isnan(loss):
        return
    first = after[0][1]
    if first > loss + RESUME_LOSS_TOLERANCE * max(loss, 1.0):
        raise ResumeError(
            f"resume from step {step} looks like a restart from scratch: loss {loss:.3f} before, {first:.3f} after"
        )
    if first_loss is not None and not math.isnan(first_loss):
        progress = first_loss - loss
        if progress > 0.1 * max(first_loss, 1.0) and first > first_loss - RESUME_PROGRESS_KEPT * progress:
            raise ResumeError(
                f"resume from step {step} looks like a restart from scratch: loss {first:.3f} after "
                f"resuming is back near the untrained {first_loss:.3f} (was {loss:.3f})"
            )
    log.info("resumed at step %d: loss %.3f before, %.3f after", step, loss, first)
