"""The deployments on a real stack: Prefect server on PostgreSQL with a process worker, MLflow
server on PostgreSQL with S3 artifacts (moto), all on loopback. One stack per test session
(`shared_stack`, with test_promotion_relay.py), this module's deployments and model on it.

finetune from `prefect deployment run` -> version + aliases in MLflow, artifacts in S3;
retrain with nothing changed -> Completed early, no training; the dataset event -> retrain-on-data
run with the templated parameters -> retrains through the finetune deployment; promote by hand.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from flows.deployfile import local_deployments
from peftflow.builtin.datasets import make_rows
from peftflow.config import RunConfig, demo_config
from tests.integration.stack import (
    ROOT,
    api,
    deploy,
    flow_runs_of,
    postgres_available,
    run_deployment,
    wait_flow_run,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.xdist_group("stack"),
    pytest.mark.skipif(not postgres_available(), reason="needs PostgreSQL on 127.0.0.1:5432"),
]

NAME = "stack-tiny"
ALPACA = {"formatting": "alpaca", "columns": {"prompt": "instruction", "query": "input", "response": "output"}}


def dataset_dir(path, seed: int):
    path.mkdir(parents=True)
    (path / "dataset_info.json").write_text(json.dumps({"orders": {"file_name": "orders.json", **ALPACA}}))
    (path / "orders.json").write_text(json.dumps(make_rows(40, seed=seed)))
    return str(path)


@pytest.fixture(scope="module")
def stack(shared_stack, tiny_model):
    s = shared_stack
    tmp = s.tmp
    config = {
        "model_name_or_path": tiny_model,
        "dataset": "orders",
        "dataset_dir": dataset_dir(tmp / "data-v1", 1),
        "output_dir": str(tmp / "runs"),
        "max_steps": 4,
        "learning_rate": 5e-3,
        "logging_steps": 2,
        "save_steps": 4,
        "per_device_train_batch_size": 4,
        "val_size": 8,
        "registry": {"name": NAME, "experiment": "stack"},
        "promotion": {"metric": "perplexity"},
        "evaluation": {"metric": "json_fields", "max_samples": 2, "max_new_tokens": 4, "batch_size": 4},
        "storage": "s3://peftflow-artifacts/store",
    }  # the run store on the stack's S3, beside MLflow's artifacts
    # The flow-run processes reach that S3 (moto) through the standard AWS variables.
    # Flow parameters travel as the grouped JSON a deployment stores (the server checks them against the form's schema).
    config = RunConfig.model_validate(config).model_dump(mode="json")
    spec = local_deployments(pool="local", env={"AWS_ENDPOINT_URL": s.env["S3_ENDPOINT"]})
    for d in spec["deployments"]:
        if d["name"].startswith("retrain"):
            d["parameters"] = {"config": config}  # the schedule and the event use the tiny run
        if d["name"] == "sweep-variant":  # another machine: its own disk; results come back through the store
            d["work_pool"]["job_variables"]["env"]["PEFTFLOW_HOME"] = str(tmp / "variant-machine")
    deploy(s, spec, tmp / "prefect.local.yaml")
    s.config = config
    return s


def mlflow_client(stack):
    from mlflow import MlflowClient

    uri = stack.env["MLFLOW_TRACKING_URI"]
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def alias(stack, name):
    return str(mlflow_client(stack).get_model_version_by_alias(NAME, name).version)


def test_finetune_deployment_defaults_to_the_demo(stack):
    """What the dashboard's Quick run submits and its Custom run form starts from, as the server stores it."""
    dep = api(stack, "GET", "/deployments/name/finetune/finetune")
    assert dep["parameters"] == {}
    assert dep["parameter_openapi_schema"]["properties"]["config"]["default"] == demo_config().model_dump(mode="json")


def test_finetune_deployment_registers_a_champion(stack):
    run_id = run_deployment(stack, "finetune/finetune", {"config": stack.config})
    run = wait_flow_run(stack, run_id)
    assert run["state"]["type"] == "COMPLETED", stack.logs()
    assert alias(stack, "champion") == alias(stack, "challenger") == "1"
    version = mlflow_client(stack).get_model_version(NAME, "1")
    assert version.tags["prefect_flow_run_id"] == run_id
    # The worker's flow-run process sends the core's lines too, and no bytecode listings.
    logs = [
        log["message"]
        for log in api(stack, "POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
    ]
    assert [m for m in logs if "LOAD_GLOBAL" in m] == []
    assert [m.split()[1] for m in logs if m.startswith("step ")] == ["2/4", "4/4"]
    assert any(m.startswith("scored tuned: loss ") for m in logs), logs
    # artifacts went through the MLflow server into S3 (moto)
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=stack.env["S3_ENDPOINT"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="peftflow-artifacts", Prefix="mlflow/").get("Contents", [])]
    assert any(k.endswith("model.safetensors") for k in keys) and any(k.endswith("eval_report.json") for k in keys)
    # the run store: the step outputs sealed beside them, the step cache too, no checkpoints left
    stored = [o["Key"] for o in s3.list_objects_v2(Bucket="peftflow-artifacts", Prefix="store/").get("Contents", [])]
    for output in ("adapter", "merged", "eval_report.json"):
        assert any(k.endswith(f"/{output}/_manifest.json") for k in stored), stored
    assert any(k.startswith("store/prefect-results/") for k in stored) and not any("/checkpoints/" in k for k in stored)
    # the registry lives in PostgreSQL
    import psycopg2

    from tests.integration.stack import PG

    with psycopg2.connect(dbname=stack.env["MLFLOW_DB"], **PG) as conn, conn.cursor() as cur:
        cur.execute("select count(*) from model_versions where name = %s", (NAME,))
        assert cur.fetchone()[0] == 1


def test_retrain_skips_when_nothing_changed(stack):
    before = len(flow_runs_of(stack, "finetune/finetune"))
    run = wait_flow_run(stack, run_deployment(stack, "retrain/retrain-nightly", {}))
    assert run["state"]["type"] == "COMPLETED", stack.logs()
    assert run["state"]["message"].startswith("Skipped: data, base model and config fingerprints match champion")
    assert len(flow_runs_of(stack, "finetune/finetune")) == before


def test_dataset_event_retrains_with_the_templated_dataset(stack):
    changed = dataset_dir(stack.tmp / "data-v2", 2)
    r = subprocess.run(
        [sys.executable, "-m", "flows.cli", "emit-dataset-updated", "--dataset", "orders", "--dataset-dir", changed],
        env=stack.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "emitted peftflow.dataset.updated" in r.stdout, r.stderr
    deadline = time.time() + 60
    while not (runs := flow_runs_of(stack, "retrain/retrain-on-data")) and time.time() < deadline:
        time.sleep(1)
    (run,) = runs
    assert run["parameters"]["dataset"] == "orders" and run["parameters"]["dataset_dir"] == changed
    run = wait_flow_run(stack, run["id"])
    assert run["state"]["type"] == "COMPLETED", stack.logs()
    assert "retrained by finetune/finetune" in run["state"]["message"]
    assert alias(stack, "challenger") == "2"
    assert (
        mlflow_client(stack).get_model_version(NAME, "2").tags["data_fingerprint"]
        != mlflow_client(stack).get_model_version(NAME, "1").tags["data_fingerprint"]
    )


def test_promote_deployment_moves_champion_with_a_reason(stack):
    # the gate may or may not have promoted v2: promote by hand whichever is not champion
    before = alias(stack, "champion")
    target = "1" if before == "2" else "2"
    run = wait_flow_run(
        stack,
        run_deployment(
            stack,
            "promote/promote",
            {"name": NAME, "version": target, "reason": f"ship v{target}", "actor": "dashboard:test"},
        ),
    )
    assert run["state"]["type"] == "COMPLETED", stack.logs()
    assert alias(stack, "champion") == target and alias(stack, "previous") == before
    last = json.loads(mlflow_client(stack).get_model_version(NAME, target).tags["alias.champion.history"])[-1]
    assert (last["by"], last["reason"]) == ("dashboard:test", f"ship v{target}")


def test_evaluate_model_deployment_scores_a_version(stack):
    run = wait_flow_run(
        stack,
        run_deployment(
            stack, "evaluate-model/evaluate-model", {"name": NAME, "version": "previous", "config": stack.config}
        ),
    )
    assert run["state"]["type"] == "COMPLETED", stack.logs()
    previous = alias(stack, "previous")
    scores = json.loads(mlflow_client(stack).get_model_version(NAME, previous).tags["eval.orders"])
    assert scores["version"] == previous and scores["metric"] == "json_fields" and scores["perplexity"] > 1


def test_sweep_deployment_trains_each_variant_on_the_pool_and_registers_the_winner(stack):
    """The dashboard's sweep: the grid as a parameter, each variant a run of the `sweep-variant`
    deployment with a PEFTFLOW_HOME of its own (as on another pod), its results and the winner's
    model back to the sweep through the S3 run store."""
    from peftflow.config.form import FLAT

    flat = RunConfig.model_validate(stack.config).model_dump(mode="json", context=FLAT)
    config = RunConfig.model_validate(
        {**flat, "registry": {**flat["registry"], "name": "stack-sweep"}, "output_dir": None}
    ).model_dump(mode="json")  # under each PEFTFLOW_HOME
    run_id = run_deployment(
        stack, "sweep/sweep", {"config": config, "grid": {"learning_rate": [5e-3, 1e-7]}, "max_parallel": 2}
    )
    run = wait_flow_run(stack, run_id)
    assert run["state"]["type"] == "COMPLETED", stack.logs()
    variants = [
        r
        for r in flow_runs_of(stack, "sweep-variant/sweep-variant")
        if r["parent_task_run_id"] and r["name"].startswith("learning_rate=")
    ]
    assert sorted(r["name"] for r in variants) == ["learning_rate=0.005", "learning_rate=1e-07"]
    assert all(r["state"]["type"] == "COMPLETED" for r in variants)
    (version,) = mlflow_client(stack).search_model_versions("name = 'stack-sweep'")
    assert str(version.version) == str(
        mlflow_client(stack).get_model_version_by_alias("stack-sweep", "champion").version
    )
    assert mlflow_client(stack).get_run(version.run_id).data.tags["peftflow.sweep.variant"] == "learning_rate=0.005"
    # Trained under the variants' home; the sweep's home has what it fetched: both results, the winner's model.
    from pathlib import Path

    there = Path(stack.tmp / "variant-machine" / "runs" / "stack-sweep")
    here = Path(stack.env["PEFTFLOW_HOME"]) / "runs" / "stack-sweep"
    assert len(list(there.glob("*/adapter"))) == 2 and len(list(here.glob("*/sweep_variant.json"))) == 2
    assert [p.parent.name for p in here.glob("*/merged")] == [version.tags["train_key"]]


def test_the_registry_server_is_asked_about_a_registered_name(stack, monkeypatch):
    """The preflight asks the team's MLflow server (not only MLflow's local rule) whether it takes
    a registered-model name: its refusal is one line naming the key and the server."""
    from peftflow.errors import UserError
    from peftflow.preflight_checks import _ask_registry_server

    uri = stack.env["MLFLOW_TRACKING_URI"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    _ask_registry_server("team-orders", "registry.name")  # a name the server takes: nothing said
    with pytest.raises(UserError, match=rf"^registry.name: 'team/orders': the MLflow registry at {uri} refuses"):
        _ask_registry_server("team/orders", "registry.name")
