"""Publishing against a real `mlflow server`: an outage during publish, two publishers at once.

The server runs as a subprocess (sqlite backend and proxied artifacts in tmp, a free port on
127.0.0.1) and is killed and restarted by the test. MLflow's own HTTP retries are turned off so the
Prefect task's retries are what bridges the outage.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from peftflow.config import RunConfig
from peftflow.evaluation.report import EvalReport, ModelScores
from peftflow.merge import MergeResult
from peftflow.mlflow_io.aliases import alias_history
from peftflow.mlflow_io.tracking import configure_mlflow, start_run
from peftflow.mlflow_io.versions import get_version_by_alias
from peftflow.training.run import TrainResult
from tasks.publish_version import publish_version

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("prefect")]

LINEAGE = {"base_model": "builtin:tiny-random", "method": "lora", "train_key": "k"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, root: Path):
        self.root, self.port = root, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> None:
        cmd = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{self.root}/server.db",
            "--artifacts-destination",
            (self.root / "artifacts").as_uri(),
        ]
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not come up"
            time.sleep(0.3)

    def stop(self) -> None:
        """A hard outage: the whole process group dies at once."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def tracking(server, monkeypatch, peftflow_home):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    configure_mlflow()
    return server


def _inputs(tiny_model: str, tmp_path: Path):
    adapter = tmp_path / "stage" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    train = TrainResult(str(adapter), 1.5, 2, 1.0, 10, 10.0, 1, 2, None, ((1, 2.0), (2, 1.5)))
    merged = MergeResult(tiny_model, 0.0, 1e-3, True)
    evaluation = EvalReport(
        "json_fields", {"base": ModelScores("base", 2.0, 7.39, 0.1), "tuned": ModelScores("tuned", 1.0, 2.72, 0.5)}
    )
    return train, merged, evaluation


def test_publish_survives_an_mlflow_outage_and_registers_once(harness, tracking, tiny_model, tmp_path):
    cfg = RunConfig(model_name_or_path=tiny_model, registry={"name": "outage", "experiment": "outage"})
    run_id = start_run(cfg, {})
    train, merged, evaluation = _inputs(tiny_model, tmp_path)

    @flow
    def publish_only():
        # A restart of the server takes 10-45 s on a busy 2-core machine: up to 90 s of retries.
        task = publish_version.with_options(retries=45, retry_delay_seconds=2)
        return task(cfg, run_id, train, merged, evaluation, LINEAGE)

    tracking.stop()  # the server is down when publishing starts ...
    restarter = threading.Timer(3.0, tracking.start)  # ... and comes back during the retry backoff
    restarter.start()
    try:
        state = publish_only(return_state=True)
    finally:
        restarter.join()
    version = state.result()
    assert version.version == "1"

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    assert [r.run_count for r in runs if r.name.startswith("publish-version")][0] > 1  # it did fail and retry

    mlflow = MlflowClient()
    versions = mlflow.search_model_versions("name='outage'")
    assert [v.version for v in versions] == ["1"] and versions[0].run_id == run_id
    assert mlflow.get_model_version_by_alias("outage", "challenger").version == "1"


PUBLISHER = """
import json, sys
from peftflow.mlflow_io.publishing import publish_model
from peftflow.promotion import GateDecision, promote
run_id, model_dir, lineage = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()  # both processes are loaded: go
ref = publish_model(run_id, "race", model_dir, lineage, {"score": 1.0})
champion = promote("race", ref.version, GateDecision(True, "beats base", 1.0, 0.0, "base model"), f"run {run_id}")
print(json.dumps([ref.version, champion]))
"""


def test_two_publishers_at_once_leave_consistent_aliases(tracking, tiny_model, tmp_path):
    """Two processes (two flows' publish + promote) on the same registered model at the same time.
    Threads would not do: transformers' model loading is not thread-safe."""
    cfg = RunConfig(model_name_or_path=tiny_model, registry={"name": "race", "experiment": "race"})
    run_ids = [start_run(cfg, {"who": str(i)}) for i in range(2)]
    script = tmp_path / "publisher.py"
    script.write_text(PUBLISHER)
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "120",
        "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), run_id, tiny_model, json.dumps(LINEAGE)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for run_id in run_ids
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()[-3000:]
    for p in procs:  # release both at once
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    results = {run_id: json.loads(out.strip().splitlines()[-1]) for run_id, (out, _) in zip(run_ids, outs)}

    client = MlflowClient()
    versions = {v.version: v.run_id for v in client.search_model_versions("name='race'")}
    assert sorted(versions) == ["1", "2"] and sorted(versions.values()) == sorted(run_ids)  # none lost, none twice
    assert {v for v, _ in results.values()} == {"1", "2"}
    alias = {a: get_version_by_alias("race", a) for a in ("champion", "challenger", "previous")}
    champion, previous = alias["champion"].version, alias["previous"].version
    assert {champion, previous} == {"1", "2"}  # promotions were serialised: the loser is `previous`
    assert alias["challenger"].version in {"1", "2"}
    # Each champion move is in the history of the version it landed on.
    assert alias_history("race", champion, "champion") and alias_history("race", previous, "champion")
