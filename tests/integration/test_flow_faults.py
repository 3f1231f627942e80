"""Faults around the finetune flow: bad data, a crash between registering and moving aliases, a
merge that fails its fidelity check. Nothing may be lost, duplicated or promoted by mistake."""

import sqlite3

import pytest
from mlflow import MlflowClient

import flows.gate as gate_module
from flows.finetune import finetune
from peftflow.config import RunConfig
from peftflow.data import prepare_dataset
from peftflow.errors import UserError
from peftflow.lineage import train_key
from peftflow.mlflow_io import publishing
from peftflow.mlflow_io.aliases import set_alias
from peftflow.mlflow_io.publishing import publish_model
from peftflow.mlflow_io.versions import get_version_by_alias
from peftflow.models.resolve import resolve_model
from peftflow.run_dir import RunDir
from tasks.publish_version import publish_version
from tests.integration.conftest import tiny_config as shared_tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("prefect")]


def tiny_config(tiny_model, tmp_path, **overrides) -> RunConfig:
    fields = dict(
        max_steps=4,
        save_steps=2,
        val_size=8,
        registry={"name": "tiny-faults"},
        evaluation={"metric": "json_fields", "max_samples": 2, "max_new_tokens": 4, "batch_size": 4},
    )
    return shared_tiny_config(tiny_model, tmp_path, **{**fields, **overrides})


def registered(tmp_path) -> tuple[int, int]:
    """(registered models, model versions) in the test's MLflow store."""
    db = tmp_path / "mlflow.db"
    if not db.exists():
        return 0, 0
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
        if "registered_models" not in tables:
            return 0, 0
        return (
            conn.execute("select count(*) from registered_models").fetchone()[0],
            conn.execute("select count(*) from model_versions").fetchone()[0],
        )


def test_bad_dataset_fails_the_flow_with_the_one_line_message(harness, env, tiny_model, write_dataset):
    root = write_dataset(
        {"qa": {"file_name": "qa.json"}}, {"qa.json": '[{"instruction": "q", "output": "a"},\n{"instr'}
    )
    cfg = tiny_config(tiny_model, env, dataset="qa", dataset_dir=str(root))
    with pytest.raises(UserError) as direct:
        prepare_dataset(cfg, tiny_model)
    state = finetune(cfg, return_state=True)
    assert state.is_failed()
    with pytest.raises(UserError) as from_flow:
        state.result()
    assert str(from_flow.value) == str(direct.value)
    assert str(from_flow.value).startswith(f"{root}/qa.json: line 2: invalid JSON") and "\n" not in str(from_flow.value)
    assert str(direct.value) in state.message
    assert registered(env) == (0, 0)
    assert not (env / "runs").exists()  # no training started


def test_crash_between_register_and_aliases_then_rerun(harness, env, tiny_model, monkeypatch):
    cfg = tiny_config(tiny_model, env)
    model = resolve_model(tiny_model)
    work = RunDir.of(cfg, train_key(cfg, model.fingerprint, prepare_dataset(cfg, tiny_model).fingerprint)).path
    real_set_alias = set_alias

    def killed_before_aliases(name, alias, *args, **kwargs):
        raise RuntimeError("worker killed after create_model_version")

    # The process dies right after the version is registered, before any alias moves (no retry:
    # a killed worker does not retry in-process).
    monkeypatch.setattr(publishing, "set_alias", killed_before_aliases)
    monkeypatch.setattr(gate_module, "publish_version", publish_version.with_options(retries=0))
    crashed = finetune(cfg, return_state=True)
    assert crashed.is_failed() and "worker killed" in crashed.message
    client = MlflowClient()
    assert registered(env) == (1, 1)
    assert get_version_by_alias("tiny-faults", "champion") is None
    assert (work / "checkpoints").is_dir()  # not published: the resume point stays

    monkeypatch.setattr(publishing, "set_alias", real_set_alias)
    result = finetune(cfg)
    assert (result.version, result.champion, result.promoted) == ("1", "1", True)
    assert registered(env) == (1, 1)  # the rerun found the version, it did not register another
    assert get_version_by_alias("tiny-faults", "challenger").version == "1"
    assert client.get_run(result.run_id).info.status == "FINISHED"

    # Published: the scratch space is gone, the outputs stay, and every weight file is safetensors.
    assert not (work / "checkpoints").exists()
    for sub in ("adapter", "merged"):
        files = {p.name for p in (work / sub).iterdir()}
        assert any(f.endswith(".safetensors") for f in files), sub
        assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))], (sub, files)

    # A third run, and a second publish of the same run: still one version.
    assert finetune(cfg).version == "1"
    again = publish_model(result.run_id, "tiny-faults", str(work / "merged"), {}, {})
    assert again.version == "1" and registered(env) == (1, 1)


def test_failed_merge_fidelity_registers_nothing(harness, env, tiny_model):
    cfg = tiny_config(tiny_model, env, registry={"name": "tiny-unfaithful"}, merge_tolerance=1e-30)
    state = finetune(cfg, return_state=True)
    assert state.is_failed() and "merged model differs from the adapter model" in state.message
    assert registered(env) == (0, 0)
    assert get_version_by_alias("tiny-unfaithful", "champion") is None
    runs = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("peftflow").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
