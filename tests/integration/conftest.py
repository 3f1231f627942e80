"""Integration fixtures: one Prefect test server per worker, a fresh SQLite MLflow per test, one
real team stack per worker for the modules that deploy onto one."""

import copy

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.testing.utilities import prefect_test_harness

from peftflow.config import RunConfig


@pytest.fixture(scope="session")
def harness(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        # Cached task results of this session only: never a cache hit from another test session.
        mp.setenv("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(tmp_path_factory.mktemp("prefect-results")))
        # Queued sweep variants poll for their slot every ~2 s, as under `peftflow sweep` (flows/cli.py).
        mp.setenv("PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS", "2")
        with prefect_test_harness(server_startup_timeout=120):
            yield


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server on loopback, once per worker: each user makes its own bucket."""
    import sys
    from pathlib import Path

    from tests.integration.stack import Proc, free_port, wait_http

    port = free_port()
    proc = Proc(
        "moto",
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        None,
        tmp_path_factory.mktemp("moto"),
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/moto-api/", proc, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The standard AWS environment pointing at moto (boto3 and s3fs read the same variables)."""
    for k, v in {
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return s3_server


@pytest.fixture(scope="session")
def _team_stack(tmp_path_factory, peftflow_home):
    """moto + MLflow server (webhooks on) + Prefect server + a `local` process worker, started once:
    starting them takes minutes on a loaded machine. Each module deploys what it needs onto it."""
    from cryptography.fernet import Fernet

    from tests.integration.stack import start_worker, team_stack

    webhooks = {
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_CACHE_TTL": "1",
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
    }
    with team_stack(tmp_path_factory.mktemp("team-stack"), peftflow_home, mlflow_env=webhooks) as s:
        start_worker(s)
        yield s


@pytest.fixture(scope="module")
def shared_stack(_team_stack, tmp_path_factory):
    """The team stack, for one module: its own attributes and log dir, the same processes (a process
    it starts stops with the stack). Registered model names keep modules apart."""
    s = copy.copy(_team_stack)
    s.tmp = tmp_path_factory.mktemp("module")
    return s


@pytest.fixture
def env(tmp_path, monkeypatch, peftflow_home):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return tmp_path


def tiny_config(tiny_model, tmp_path, **overrides) -> RunConfig:
    """A few steps on the tiny model and the demo data: seconds, not minutes."""
    fields = dict(
        model_name_or_path=tiny_model,
        output_dir=str(tmp_path / "runs"),
        max_steps=6,
        learning_rate=5e-3,
        logging_steps=2,
        save_steps=3,
        per_device_train_batch_size=4,
        registry={"name": "tiny-itest"},
        promotion={"metric": "perplexity"},
        evaluation={"metric": "json_fields", "max_samples": 4, "max_new_tokens": 8, "batch_size": 4},
    )
    if overrides.get("student_layers"):  # the student is the pruned teacher, not model_name_or_path
        fields.pop("model_name_or_path")
    return RunConfig(**{**fields, **overrides})


def task_states(flow_run_id) -> dict[str, str]:
    """Task name (without the run suffix) -> final state name, for one flow run."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}
