"""The run store (peftflow/store.py) on moto's S3 server: a training killed (SIGKILL) on one
machine resumes on another from the last checkpoint sealed in the store, exactly (step counter,
LR schedule, optimizer: the loss curve of an uninterrupted run); unsealed or damaged stored
checkpoints are never resumed. "Another machine" is another PEFTFLOW_HOME and another process,
with nothing in common but the store."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from peftflow.config import RunConfig
from peftflow.data import prepare_dataset
from peftflow.store import MANIFEST, RunStore, run_key
from peftflow.training.run import run as train_run
from peftflow.training.trainer import MetricsCallback
from tests.integration.stack import ROOT
from tests.unit.test_resume_after_kill import CHILD, kill_when  # CHILD trains slowly enough to be killed

pytestmark = pytest.mark.integration
MAX_STEPS = 10


@pytest.fixture
def store_url(s3_env) -> str:
    import boto3

    bucket = f"runstore-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/peftflow"


def _cfg(tiny_model: str, storage: str | None) -> RunConfig:
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
        registry={"name": "store-resume"},
        storage=storage,
    )


def _kill_once_stored(cfg: RunConfig, tiny_model: str, data_path: str, home: Path, store: RunStore, key: str) -> int:
    """Train on machine A until the store holds a sealed checkpoint-4 or later, then SIGKILL it;
    returns the newest sealed step."""
    env = {**os.environ, "PEFTFLOW_HOME": str(home), "PYTHONPATH": str(ROOT)}
    out = home / "runs" / "store-resume" / "stage"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, cfg.model_dump_json(), tiny_model, data_path, str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    kill_when(proc, lambda: max(_sealed(store, key), default=0) >= 4, "a stored checkpoint-4", timeout=180)
    assert not (out / "adapter").exists()
    return max(_sealed(store, key))


def _sealed(store: RunStore, key: str) -> list[int]:
    """Steps of the checkpoints sealed in the store."""
    return [
        int(n.split("-")[1]) for n in store.children(f"{key}/checkpoints") if store.manifest(f"{key}/checkpoints/{n}")
    ]


def _plant_broken_checkpoints(store: RunStore, key: str, n: int, scratch: Path) -> None:
    """checkpoint-(n+1): every file but no manifest (an upload cut short); checkpoint-(n+2):
    sealed, then one object replaced by half of it (a half-written object)."""
    assert store.get_dir(f"{key}/checkpoints/checkpoint-{n}", scratch)
    store.put_dir(scratch, f"{key}/checkpoints/checkpoint-{n + 1}")
    store.fs.rm_file(f"{store.root}/{key}/checkpoints/checkpoint-{n + 1}/{MANIFEST}")
    store.put_dir(scratch, f"{key}/checkpoints/checkpoint-{n + 2}")
    blob = (scratch / "optimizer.pt").read_bytes()
    store.fs.pipe_file(f"{store.root}/{key}/checkpoints/checkpoint-{n + 2}/optimizer.pt", blob[: len(blob) // 2])


def test_killed_on_one_home_resumes_on_another_from_the_store(tiny_model, store_url, tmp_path, monkeypatch):
    cfg = _cfg(tiny_model, store_url)
    store, key = RunStore(store_url), run_key("store-resume", "stage")
    n = _kill_once_stored(cfg, tiny_model, prepare_dataset(cfg, tiny_model).path, tmp_path / "home-a", store, key)
    assert 4 <= n < MAX_STEPS
    _plant_broken_checkpoints(store, key, n, tmp_path / "scratch")

    monkeypatch.setenv("PEFTFLOW_HOME", str(tmp_path / "home-b"))  # machine B: an empty disk
    out = tmp_path / "home-b" / "runs" / "store-resume" / "stage"
    data = prepare_dataset(cfg, tiny_model)
    logged: list[tuple[int, dict]] = []
    resumed = train_run(
        cfg, tiny_model, data.path, out, callbacks=(MetricsCallback(lambda s, m: logged.append((s, m))),)
    )
    assert resumed.resumed_from_step == n and resumed.steps == MAX_STEPS
    assert [s for s, m in logged if "loss" in m] == list(range(n + 1, MAX_STEPS + 1))  # the counter continues

    # Scheduler and optimizer restored: LR and loss are those of one uninterrupted run.
    ref_logged: list[tuple[int, dict]] = []
    reference = train_run(
        cfg.model_copy(update={"storage": None}),
        tiny_model,
        data.path,
        tmp_path / "reference",
        callbacks=(MetricsCallback(lambda s, m: ref_logged.append((s, m))),),
    )
    ref = dict(reference.loss_history)
    for step, loss in resumed.loss_history:
        assert loss == pytest.approx(ref[step], rel=2e-3), (step, loss, ref[step])
    ref_lr = {s: m["learning_rate"] for s, m in ref_logged if "learning_rate" in m}
    for step, metrics in logged:
        if "learning_rate" in metrics:
            assert metrics["learning_rate"] == pytest.approx(ref_lr[step], rel=1e-6), step

    # The broken ones were never resumed and the rotation dropped them with the old checkpoints.
    assert set(store.children(f"{key}/checkpoints")) == {f"checkpoint-{MAX_STEPS - 2}", f"checkpoint-{MAX_STEPS}"}
