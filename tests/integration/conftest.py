"""Integration fixtures: one Prefect test server per worker, a fresh SQLite MLflow per test."""

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
        with prefect_test_harness(server_startup_timeout=120):
            yield


@pytest.fixture
def env(tmp_path, monkeypatch, peftflow_home):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return tmp_path


def tiny_config(tiny_model, tmp_path, **overrides) -> RunConfig:
    """A few steps on the tiny model and the demo data: seconds, not minutes."""
    fields = dict(
        model_name_or_path=tiny_model, output_dir=str(tmp_path / "runs"), max_steps=6, learning_rate=5e-3,
        logging_steps=2, save_steps=3, per_device_train_batch_size=4,
        registry={"name": "tiny-itest"}, promotion={"metric": "perplexity"},
        evaluation={"metric": "json_fields", "max_samples": 4, "max_new_tokens": 8, "batch_size": 4})
    if overrides.get("student_layers"):  # the student is the pruned teacher, not model_name_or_path
        fields.pop("model_name_or_path")
    return RunConfig(**{**fields, **overrides})


def task_states(flow_run_id) -> dict[str, str]:
    """Task name (without the run suffix) -> final state name, for one flow run."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}
