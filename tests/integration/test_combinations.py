"""Every method on every entry path: the combination matrix.

For each finetuning_type (lora also with DoRA), for `stage: distill` (a one-layer student pruned
from the tiny teacher, top-8 teacher cache), for `stage: dpo` (IPO on the built-in pairs), for
`stage: rm` (a reward model on them) and for a vision-language config (tiny-llava on a subset of
the built-in shapes task):

- the CLI: `python -m flows.cli run CONFIG.yaml` in a subprocess, the YAML holding only the keys a
  user writes;
- the deployment: a flow run of `finetune/finetune` created through the Prefect API with
  `{"config": <every field as JSON>}`, as the dashboard's run form submits it, validated again
  by a process worker.

Both register a version whose `peftflow.kind` says merged or adapter. Then `retrain` skips when
nothing changed and trains when the data changed, and `evaluate-model` scores a merged and an
adapter version.

One stack for the module (Prefect server + a process worker running two flow runs at once, one
MLflow server, one PEFTFLOW_HOME so models and prepared data are built once). Both entries of a
case share an `output_dir`, so the deployment run, submitted when the CLI run is done, finds the
CLI's training in the cache: the dashboard's JSON must give the same train key as the YAML, and
the worker then runs while this process trains the next case.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from flows.deployfile import local_deployments
from peftflow.builtin.datasets import make_rows
from peftflow.config import RunConfig
from tests.integration.stack import (
    ROOT,
    create_flow_run,
    deploy,
    postgres_available,
    start_worker,
    team_stack,
    wait_flow_run,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.xdist_group("matrix"),
    pytest.mark.skipif(not postgres_available(), reason="needs PostgreSQL on 127.0.0.1:5432"),
]

# What a user writes for a two-step run on the tiny model; every case adds its own keys.
BASE = {
    "model_name_or_path": "builtin:tiny-random",
    "dataset": "demo_orders",
    "dataset_dir": "builtin",
    "max_samples": 24,
    "val_size": 4,
    "max_steps": 2,
    "learning_rate": 5e-3,
    "logging_steps": 1,
    "save_steps": 2,
    "per_device_train_batch_size": 4,
    "promotion": {"metric": "perplexity"},
    "evaluation": {"metric": "json_fields", "max_samples": 2, "max_new_tokens": 4, "batch_size": 2},
}
# case -> (keys over BASE, the peftflow.kind of the version it publishes)
CASES = {
    "full": ({"finetuning_type": "full"}, "merged"),
    "lora": ({"finetuning_type": "lora"}, "merged"),
    "dora": ({"finetuning_type": "lora", "use_dora": True}, "merged"),
    "ia3": ({"finetuning_type": "ia3"}, "merged"),
    "prefix": ({"finetuning_type": "prefix", "num_virtual_tokens": 4}, "adapter"),
    "prompt": ({"finetuning_type": "prompt", "num_virtual_tokens": 4}, "adapter"),
    "ptuning": ({"finetuning_type": "ptuning", "num_virtual_tokens": 4}, "adapter"),
    "distill": (
        {
            "stage": "distill",
            "teacher": "builtin:tiny-random",
            "student_layers": 1,
            "teacher_topk": 8,
            "model_name_or_path": None,
        },
        "merged",
    ),
    # with a guard set of SFT rows: DPO must not lose what SFT learned (read as conversations)
    "dpo": (
        {
            "stage": "dpo",
            "dataset": "demo_order_pairs",
            "pref_loss": "ipo",
            "promotion": {"metric": "perplexity", "guard_dataset": "demo_orders", "guard_max_samples": 4},
        },
        "merged",
    ),
    # a reward model, gated on its held-out pairwise loss (perplexity is a language model's)
    "rm": ({"stage": "rm", "dataset": "demo_order_pairs", "promotion": {"metric": "loss"}}, "merged"),
    "vlm": (
        {
            "model_name_or_path": "builtin:tiny-llava",
            "dataset": "demo_shapes",
            "max_samples": 12,
            "evaluation": {"metric": "answer_accuracy", "max_samples": 2, "max_new_tokens": 4, "batch_size": 2},
        },
        "merged",
    ),
}
ALPACA = {"formatting": "alpaca", "columns": {"prompt": "instruction", "query": "input", "response": "output"}}


def user_keys(stack, case: str, entry: str) -> dict:
    """The keys of the case's YAML, as a user writes them; None drops a key of BASE."""
    keys = {
        **BASE,
        **CASES[case][0],
        "output_dir": str(stack.tmp / "runs" / case),
        "registry": {"name": f"mx-{case}-{entry}", "experiment": "matrix"},
    }
    return {k: v for k, v in keys.items() if v is not None}


def dashboard_params(stack, case: str) -> dict:
    """What the dashboard form submits: the whole config, every field filled in, as JSON."""
    return {"config": RunConfig(**user_keys(stack, case, "dep")).model_dump(mode="json")}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, peftflow_home):
    from peftflow.models.resolve import resolve_model

    for name in ("builtin:tiny-random", "builtin:tiny-llava"):  # built once, before any process needs them
        resolve_model(name)
    tmp = tmp_path_factory.mktemp("matrix")
    with team_stack(tmp, peftflow_home) as s:
        s.env["OMP_NUM_THREADS"] = "1"  # three training processes share the cores
        deploy(s, local_deployments(pool="local"), tmp / "prefect.local.yaml")
        start_worker(s, limit=2)
        s.tmp = tmp
        yield s


@pytest.fixture(scope="module")
def submitted(stack) -> dict[str, str]:
    """case -> the flow run id of its deployment run, once submitted."""
    return {}


@pytest.fixture
def deployment_run(stack, submitted):
    """deployment_run(case) -> flow run id: submitted now unless its CLI test already did."""

    def submit(case: str) -> str:
        if case not in submitted:
            submitted[case] = create_flow_run(stack, "finetune/finetune", dashboard_params(stack, case))
        return submitted[case]

    return submit


def mlflow_client(stack):
    from mlflow import MlflowClient

    uri = stack.env["MLFLOW_TRACKING_URI"]
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def only_version(stack, name: str):
    (version,) = mlflow_client(stack).search_model_versions(f"name = '{name}'")
    return mlflow_client(stack).get_model_version(name, version.version)  # with its tags


@pytest.mark.parametrize("case", CASES)
def test_cli_run_registers_a_version(stack, deployment_run, case):
    path = stack.tmp / f"{case}.yaml"
    path.write_text(yaml.safe_dump(user_keys(stack, case, "cli"), sort_keys=False))
    r = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", str(path)],
        env=stack.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.splitlines()[-1].startswith(f"mx-{case}-cli v1: ")
    version = only_version(stack, f"mx-{case}-cli")
    assert version.tags["peftflow.kind"] == CASES[case][1]
    assert version.tags["method"] == CASES[case][0].get("finetuning_type", "lora")
    if CASES[case][0].get("promotion", {}).get("guard_dataset"):
        metrics = mlflow_client(stack).get_run(version.run_id).data.metrics
        assert metrics["guard.tuned.loss"] > 0 and metrics["guard.incumbent.loss"] > 0
    deployment_run(case)  # the worker publishes it from the cached training while the next case trains


@pytest.mark.parametrize("case", CASES)
def test_deployment_run_registers_a_version(stack, deployment_run, case):
    run = wait_flow_run(stack, deployment_run(case))
    assert run["state"]["type"] == "COMPLETED", stack.logs()
    version = only_version(stack, f"mx-{case}-dep")
    assert version.tags["peftflow.kind"] == CASES[case][1]
    assert version.tags["prefect_flow_run_id"] == deployment_run(case)
    # The dashboard's JSON (every field filled in) is the same training as the user's YAML.
    assert version.tags["train_key"] == only_version(stack, f"mx-{case}-cli").tags["train_key"]


def make_champion(stack, monkeypatch, name: str, version: str) -> None:
    """By hand, so the retrain check has a champion whether or not the gate passed the tiny run."""
    from peftflow.mlflow_io.aliases import move_champion
    from peftflow.mlflow_io.versions import get_version_by_alias

    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.env["MLFLOW_TRACKING_URI"])
    champion = get_version_by_alias(name, "champion")
    if champion is None or champion.version != version:
        move_champion(name, version, "matrix: retrain baseline", "test")


def retrain(stack, params: dict) -> dict:
    run = wait_flow_run(stack, create_flow_run(stack, "retrain/retrain-nightly", params))
    assert run["state"]["type"] == "COMPLETED", stack.logs()
    return run


def changed_orders(stack, case: str) -> str:
    root = stack.tmp / f"orders-{case}"
    root.mkdir()
    (root / "dataset_info.json").write_text(json.dumps({"orders": {"file_name": "orders.json", **ALPACA}}))
    (root / "orders.json").write_text(json.dumps(make_rows(24, seed=7)))
    return str(root)


RETRAIN_CASES = ["lora", "distill", "dpo"]  # distill: retrain resolves the pruned student, as finetune trains it


@pytest.mark.parametrize("case", RETRAIN_CASES)
def test_retrain_skips_when_nothing_changed(stack, deployment_run, monkeypatch, case):
    name = f"mx-{case}-dep"
    assert wait_flow_run(stack, deployment_run(case))["state"]["type"] == "COMPLETED"
    make_champion(stack, monkeypatch, name, "1")
    run = retrain(stack, dashboard_params(stack, case))
    assert run["state"]["message"].startswith("Skipped: data, base model and config fingerprints match champion"), run[
        "state"
    ]["message"]


# lora: tests/integration/test_team_stack.py retrains it on a dataset event
@pytest.mark.parametrize("case", ["distill"])
def test_retrain_trains_when_the_data_changed(stack, deployment_run, monkeypatch, case):
    name = f"mx-{case}-dep"
    assert wait_flow_run(stack, deployment_run(case))["state"]["type"] == "COMPLETED"
    make_champion(stack, monkeypatch, name, "1")
    run = retrain(
        stack, {**dashboard_params(stack, case), "dataset": "orders", "dataset_dir": changed_orders(stack, case)}
    )
    assert "retrained by finetune/finetune" in run["state"]["message"], run["state"]["message"]
    client = mlflow_client(stack)
    new = client.get_model_version_by_alias(name, "challenger")
    assert new.version != "1"
    assert new.tags["data_fingerprint"] != client.get_model_version(name, "1").tags["data_fingerprint"]


@pytest.mark.parametrize("case", ["lora", "prefix"])  # a merged and an adapter version
def test_evaluate_model_scores_the_published_version(stack, case):
    name = f"mx-{case}-cli"
    kind = only_version(stack, name).tags["peftflow.kind"]
    assert kind == CASES[case][1]
    run = wait_flow_run(
        stack,
        create_flow_run(
            stack,
            "evaluate-model/evaluate-model",
            {"name": name, "version": "challenger", **dashboard_params(stack, case)},
        ),
    )
    assert run["state"]["type"] == "COMPLETED", stack.logs()
    scores = json.loads(mlflow_client(stack).get_model_version(name, "1").tags["eval.demo_orders"])
    assert scores["version"] == "1" and scores["metric"] == "json_fields" and scores["perplexity"] > 1
