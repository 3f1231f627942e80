"""The run store's figures in docs/operations.md ("Run store figures"): an unchanged rerun of the
finetune flow on a fresh PEFTFLOW_HOME with the store vs without, and the steps a SIGKILL costs
a training resumed on a fresh home with the store vs without. moto's S3 server on loopback, a
temporary Prefect server, SQLite MLflow, builtin:tiny-random. Usage:
  PYTHONPATH=. .venv/bin/python benchmarks/run_store.py [--tmp DIR]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import sys, time
from transformers import TrainerCallback
from peftflow.config import RunConfig
from peftflow.data import prepare_dataset
from peftflow.training.run import run
class Say(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        print("step", state.global_step, flush=True); time.sleep(0.3)
cfg = RunConfig.model_validate_json(sys.argv[1])
run(cfg, sys.argv[2], prepare_dataset(cfg, sys.argv[2]).path, sys.argv[3], callbacks=(Say(),))
"""


def _moto(tmp: Path) -> subprocess.Popen:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(3)
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db",
        PEFTFLOW_HOME=str(tmp / "home-model"),
    )
    import boto3

    boto3.client("s3").create_bucket(Bucket="measure")
    return proc


def steps_lost(model: str, storage: str | None, tmp: Path, tag: str, kill_at: int = 13) -> str:
    """Train 20 steps (save_steps 5) on home A, SIGKILL after `kill_at`, train again on home B."""
    from peftflow.config import RunConfig
    from peftflow.data import prepare_dataset
    from peftflow.training.run import run

    cfg = RunConfig(
        model_name_or_path=model,
        max_steps=20,
        save_steps=5,
        logging_steps=1,
        learning_rate=5e-3,
        per_device_train_batch_size=4,
        val_size=4,
        registry={"name": f"kill-{tag}"},
        storage=storage,
    )
    env = {**os.environ, "PEFTFLOW_HOME": str(tmp / f"kill-{tag}-a"), "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, cfg.model_dump_json(), model, str(tmp / f"kill-{tag}-a" / "stage")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    for line in child.stdout:
        if line.strip() == f"step {kill_at}":
            os.kill(child.pid, signal.SIGKILL)
            break
    child.wait()
    os.environ["PEFTFLOW_HOME"] = str(tmp / f"kill-{tag}-b")
    resumed = run(cfg, model, prepare_dataset(cfg, model).path, tmp / f"kill-{tag}-b" / "stage").resumed_from_step or 0
    lost = kill_at - resumed
    return (
        f"killed after step {kill_at} of 20 (save_steps 5); a fresh home resumed from step {resumed}: {lost} steps lost"
    )


def rerun_seconds(model: str, storage: str | None, tmp: Path, name: str) -> tuple[float, float]:
    """(first run on home A, unchanged rerun on a fresh home B), in seconds."""
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

    from flows.finetune import finetune
    from peftflow.config import RunConfig

    times = []
    for home in (tmp / f"{name}-a", tmp / f"{name}-b"):
        os.environ["PEFTFLOW_HOME"] = str(home)
        cfg = RunConfig(
            model_name_or_path=model,
            output_dir=str(home / "runs"),
            max_steps=6,
            learning_rate=5e-3,
            logging_steps=2,
            save_steps=3,
            per_device_train_batch_size=4,
            registry={"name": name},
            promotion={"metric": "perplexity"},
            storage=storage,
            evaluation={"metric": "json_fields", "max_samples": 4, "max_new_tokens": 8, "batch_size": 4},
        )
        with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: str(home / "prefect-results")}):
            start = time.perf_counter()
            finetune(cfg)
            times.append(time.perf_counter() - start)
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tmp", default=None, help="Scratch directory (default: a new temporary one).")
    tmp = Path(parser.parse_args().tmp or tempfile.mkdtemp(prefix="run-store-"))
    tmp.mkdir(parents=True, exist_ok=True)
    moto = _moto(tmp)
    try:
        from prefect.testing.utilities import prefect_test_harness

        from peftflow.models.resolve import resolve_model

        model = resolve_model("builtin:tiny-random").path
        cases = (("without store", "nostore", None), ("with store", "store", "s3://measure/peftflow"))
        for label, tag, storage in cases:
            print(f"kill, {label}: {steps_lost(model, storage, tmp, tag)}", flush=True)
        with prefect_test_harness(server_startup_timeout=180):
            rerun_seconds(model, None, tmp, "warm-up")  # imports and first-use costs out of the figures
            for label, tag, storage in cases:
                first, cold = rerun_seconds(model, storage, tmp, f"rerun-{tag}")
                print(
                    f"rerun, {label}: first run {first:.1f} s, unchanged rerun on a fresh home {cold:.1f} s", flush=True
                )
    finally:
        moto.terminate()


if __name__ == "__main__":
    main()
