"""`peftflow run` as an e2e test runs it, a subprocess in an environment of its own: the session's model cache, a fresh
registry and a temporary Prefect server of its own, nothing from the hub."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cli_env(tmp: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(
        PEFTFLOW_HOME=str(home),  # reuses the session's model cache
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db",  # a fresh registry
        PREFECT_HOME=str(tmp / "prefect-home"),  # no PREFECT_API_URL: a temporary local server
        PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(tmp / "prefect-results"),  # nothing cached from elsewhere
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


def peftflow_run(config: Path, tmp: Path, env: dict[str, str], timeout: int = 1800):
    """`peftflow run CONFIG` in `tmp` with `env`; asserts it succeeded. Returns (process, seconds)."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", str(config)],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    elapsed = time.monotonic() - start
    print(f"peftflow run {config.name} took {elapsed:.0f} s")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc, elapsed
