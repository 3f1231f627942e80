"""A training process killed with SIGKILL after a checkpoint resumes from it, exactly.

A real subprocess trains the tiny model and is killed (-9) once a checkpoint is complete; training
again in the same output dir must continue the step counter, the LR schedule and the loss curve of
an uninterrupted run (optimizer and scheduler state restored), and `_check_resume` must refuse a
resume that is really a restart from scratch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peftflow.config import RunConfig
from peftflow.data import prepare_dataset
from peftflow.training.resume import ResumeError, last_complete_checkpoint
from peftflow.training.resume import check_resume as _check_resume
from peftflow.training.run import run as train_run
from peftflow.training.trainer import MetricsCallback

ROOT = Path(__file__).resolve().parents[2]
MAX_STEPS = 10

CHILD = """
import sys, time
from transformers import TrainerCallback
from peftflow.config import RunConfig
from peftflow.training.run import run as train_run

class Slow(TrainerCallback):  # leaves time to kill the process between checkpoints
    def on_step_end(self, *args, **kwargs):
        time.sleep(1.0)

cfg = RunConfig.model_validate_json(sys.argv[1])
train_run(cfg, sys.argv[2], sys.argv[3], sys.argv[4], callbacks=(Slow(),))
print("finished", flush=True)
"""


def _cfg(tiny_model: str) -> RunConfig:
    return RunConfig(
        model_name_or_path=tiny_model,
        max_steps=MAX_STEPS,
        learning_rate=5e-3,
        logging_steps=1,
        save_steps=2,
        save_total_limit=2,
        lr_scheduler_type="linear",
        per_device_train_batch_size=4,
        val_size=4,
    )


def _complete(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return (checkpoint / "optimizer.pt").is_file() and (checkpoint / "scheduler.pt").is_file()


def kill_when(proc: subprocess.Popen, ready, what: str, timeout: float = 120) -> None:
    """SIGKILL the training child `proc` as soon as `ready()` holds (it must not end before)."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"training ended before {what}:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL


def _kill_after_checkpoint(cfg, tiny_model, data_path, out: Path, tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, str(script), cfg.model_dump_json(), tiny_model, data_path, str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    kill_when(proc, lambda: _complete(out / "checkpoints" / "checkpoint-4"), "checkpoint-4")
    assert not (out / "adapter").exists()  # it really died before finishing


@pytest.fixture(scope="module")
def data(tiny_model):
    return prepare_dataset(_cfg(tiny_model), tiny_model)


def test_sigkill_after_checkpoint_then_rerun_resumes_exactly(tiny_model, data, tmp_path):
    cfg = _cfg(tiny_model)
    out = tmp_path / "run"
    _kill_after_checkpoint(cfg, tiny_model, data.path, out, tmp_path)

    checkpoints = out / "checkpoints"
    complete = sorted(
        (p for p in checkpoints.glob("checkpoint-*") if _complete(p)), key=lambda p: int(p.name.split("-")[1])
    )
    n = int(complete[-1].name.split("-")[1])
    assert 4 <= n < MAX_STEPS
    before = json.loads((complete[-1] / "trainer_state.json").read_text())["log_history"]
    # A checkpoint the kill cut short (no trainer_state.json yet) must be set aside, not resumed.
    half = checkpoints / f"checkpoint-{n + 1}"
    half.mkdir()
    (half / "adapter_model.safetensors").write_bytes(b"partial")

    logged: list[tuple[int, dict]] = []
    resumed = train_run(
        cfg, tiny_model, data.path, out, callbacks=(MetricsCallback(lambda s, m: logged.append((s, m))),)
    )
    assert resumed.resumed_from_step == n
    assert resumed.steps == MAX_STEPS
    assert [s for s, _ in logged if "loss" in _] == list(range(n + 1, MAX_STEPS + 1))  # counter continues
    assert not half.exists() and list(checkpoints.glob(f"incomplete-checkpoint-{n + 1}-*"))

    # Scheduler restored: the LR continues the line the first process was on (linear decay), it
    # does not restart at the peak.
    lr_before = [(h["step"], h["learning_rate"]) for h in before if "learning_rate" in h]
    (s1, lr1), (s2, lr2) = lr_before[0], lr_before[-1]
    slope = (lr2 - lr1) / (s2 - s1)
    for step, metrics in logged:
        if "learning_rate" in metrics:
            assert metrics["learning_rate"] == pytest.approx(lr1 + slope * (step - s1), rel=1e-4, abs=1e-9), step

    # Optimizer restored: the loss curve after the resume is the uninterrupted run's.
    reference = train_run(cfg, tiny_model, data.path, tmp_path / "reference")
    ref = dict(reference.loss_history)
    for step, loss in resumed.loss_history:
        assert loss == pytest.approx(ref[step], rel=2e-3), (step, loss, ref[step])

    # Rotation: save_total_limit checkpoints remain, all complete; written weights are safetensors.
    kept = sorted((p.name for p in checkpoints.glob("checkpoint-*")), key=lambda name: int(name.split("-")[1]))
    assert kept == [f"checkpoint-{MAX_STEPS - 2}", f"checkpoint-{MAX_STEPS}"]
    for ckpt in kept:
        assert (checkpoints / ckpt / "adapter_model.safetensors").is_file()
        assert {"optimizer.pt", "scheduler.pt"} <= {p.name for p in (checkpoints / ckpt).iterdir()}
    assert {p.suffix for p in (out / "adapter").iterdir() if p.name.startswith("adapter_model")} == {".safetensors"}


def test_a_checkpoint_without_optimizer_state_is_not_resumed(tiny_model, data, tmp_path):
    """Resuming the weights without the optimizer and scheduler state would restart Adam and the
    LR schedule (a silent partial restart): such a checkpoint is set aside, like a half-written one."""
    out = tmp_path / "run"
    train_run(_cfg(tiny_model).model_copy(update={"max_steps": 3, "save_steps": 3}), tiny_model, data.path, out)
    ckpt = out / "checkpoints" / "checkpoint-3"
    assert last_complete_checkpoint(out / "checkpoints") == str(ckpt)
    (ckpt / "optimizer.pt").unlink()
    assert last_complete_checkpoint(out / "checkpoints", set_aside=False) is None  # a torchrun rank > 0
    assert ckpt.is_dir()  # only rank 0 renames: the ranks never race over one directory
    assert last_complete_checkpoint(out / "checkpoints") is None
    assert list((out / "checkpoints").glob("incomplete-checkpoint-3-*"))


def test_an_older_complete_checkpoint_is_resumed_past_an_incomplete_one(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    for step, files in ((2, ("trainer_state.json", "optimizer.pt", "scheduler.pt")), (4, ("trainer_state.json",))):
        (checkpoints / f"checkpoint-{step}").mkdir(parents=True)
        for f in files:
            (checkpoints / f"checkpoint-{step}" / f).write_text(json.dumps({"global_step": step}))
    assert last_complete_checkpoint(checkpoints, set_aside=False) == str(checkpoints / "checkpoint-2")
    assert (checkpoints / "checkpoint-4").is_dir()


@pytest.mark.parametrize(
    "history, first_step, words",
    [
        # The counter restarted: the first step after resuming at 6 was 1.
        (((2, 10.8), (4, 8.0), (6, 6.0), (8, 5.8)), 1, "restarted the step counter"),
        # The weights were not restored: the loss jumped back to the untrained value.
        (((2, 10.8), (4, 8.0), (6, 6.0), (8, 10.7)), 7, "loss 6.000 before, 10.700 after"),
        # More than half the progress given back, though within 50% of the last loss.
        (((2, 10.8), (4, 8.0), (6, 6.0), (8, 8.7)), 7, "back near the untrained 10.800"),
    ],
)
def test_check_resume_refuses_a_restart_from_scratch(history, first_step, words):
    """A fed history: (step, loss) pairs; the checkpoint is at step 6, the first loss 10.8."""
    with pytest.raises(ResumeError, match=words):
        _check_resume((6, 6.0), history, 10.8, first_step)


def test_check_resume_accepts_a_true_continuation():
    history = ((2, 9.0), (4, 7.0), (6, 5.0), (8, 4.7), (10, 4.5))
    _check_resume((6, 5.0), history, 9.0, 7)
    _check_resume((6, 5.0), history[:3], 9.0, None)  # nothing logged after the resume: nothing to compare
