"""Promotion where people promote, on a real stack on loopback: an MLflow server on PostgreSQL
calls its webhook (`peftflow webhooks create`) on `peftflow relay`, which emits
`peftflow.model.alias-set` to a Prefect server on PostgreSQL, whose trigger runs the
`on-promotion` deployment on a process worker.

peftflow's own champion move -> recognised, nothing redone; a move through a plain `MlflowClient`
-> history, `previous`, held-out and guard scores on the version; bad signatures, garbage and
replays -> refused, nothing emitted; a burst of 100 deliveries -> 100 events, each once.

Cost: the stack is the session's (`shared_stack`, also test_team_stack.py's); nothing is trained
(the versions are the tiny model as it is); the burst moves `canary`, which no trigger acts on, so
its 100 events start no flow run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from flows.deployfile import local_deployments
from peftflow.config import RunConfig
from peftflow.mlflow_io.aliases import move_champion
from peftflow.mlflow_io.publishing import publish_model
from peftflow.mlflow_io.tracking import finish_run, start_run
from peftflow.webhook_signature import sign
from tests.integration.stack import ROOT, api, deploy, flow_runs_of, free_port, postgres_available, wait_http

pytestmark = [
    pytest.mark.integration,
    pytest.mark.xdist_group("stack"),
    pytest.mark.skipif(not postgres_available(), reason="needs PostgreSQL on 127.0.0.1:5432"),
]

NAME = "relay-tiny"
ON_PROMOTION = "on-promotion/on-promotion"


@pytest.fixture(scope="module")
def stack(shared_stack, tiny_model):
    s, secret = shared_stack, uuid.uuid4().hex
    config = {
        "model_name_or_path": tiny_model,
        "max_samples": 40,
        "val_size": 8,
        "registry": {"name": NAME, "experiment": "relay"},
        "promotion": {"guard_dataset": "demo_general", "guard_max_samples": 8},
        "evaluation": {"metric": "json_fields", "max_samples": 2, "max_new_tokens": 4, "batch_size": 4},
    }
    with pytest.MonkeyPatch.context() as mp:
        port = free_port()
        s.relay, s.secret, s.config = f"http://127.0.0.1:{port}", secret, config
        # relays this module's model only: other modules' alias moves on the same MLflow are dropped
        relay = s.start(
            "relay",
            [sys.executable, "-m", "flows.cli", "relay", "--host", "127.0.0.1", "--port", str(port), "--model", NAME],
            {**s.env, "PEFTFLOW_WEBHOOK_SECRET": secret},
        )
        spec = local_deployments(pool="local")
        spec["deployments"] = [d for d in spec["deployments"] if d["name"] in ("on-promotion", "export-champion")]
        spec["deployments"][0]["parameters"] = {"config": RunConfig.model_validate(config).model_dump(mode="json")}
        deploy(s, spec, s.tmp / "prefect.local.yaml")
        wait_http(f"{s.relay}/health", relay)
        mp.setenv("MLFLOW_TRACKING_URI", s.env["MLFLOW_TRACKING_URI"])
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        publish_two_versions(tiny_model)
        yield s


def publish_two_versions(model_dir: str) -> None:
    """v1 published by peftflow (the tiny model as it is, no training); v2 the same logged model
    registered again, as a person would from the MLflow UI."""
    cfg = RunConfig(model_name_or_path=model_dir, registry={"name": NAME, "experiment": "relay"})
    run_id = start_run(cfg, {})
    v1 = publish_model(run_id, NAME, model_dir, {"base_model": model_dir}, {})
    finish_run(run_id)
    source = mlflow_client().get_model_version(NAME, v1.version).source  # models:/<logged model id>
    mlflow_client().create_model_version(NAME, source=source, run_id=run_id, model_id=source.split("/")[-1])


def mlflow_client():
    from mlflow import MlflowClient

    return MlflowClient()


def cli(stack, *args) -> subprocess.CompletedProcess:
    env = {**stack.env, "PEFTFLOW_WEBHOOK_SECRET": stack.secret}
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def wait_runs(stack, count: int, timeout: float = 240) -> list[dict]:
    """The on-promotion flow runs once there are `count` of them and all have ended."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = flow_runs_of(stack, ON_PROMOTION)
        if len(runs) >= count and all(r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED") for r in runs):
            return runs
        time.sleep(2)
    raise TimeoutError(f"{len(runs)} on-promotion runs, waiting for {count}\n{stack.logs()}")


def test_webhook_registration_is_idempotent_and_tested(stack):
    url = f"{stack.relay}/mlflow-webhook"
    first = cli(stack, "webhooks", "create", "--url", url, "--model", NAME)
    assert first.returncode == 0 and " created -> " in first.stdout and "test delivery: 200" in first.stdout, (
        first.stdout + first.stderr
    )
    again = cli(stack, "webhooks", "create", "--url", url, "--model", NAME)
    assert again.returncode == 0 and " updated -> " in again.stdout, again.stdout + again.stderr
    assert [w.name for w in mlflow_client().list_webhooks()] == ["peftflow-relay"]


def test_own_move_is_recognised_and_a_plain_mlflow_client_move_is_recorded_scored_and_guarded(stack):
    move_champion(NAME, "1", "first release", "test:alice")  # peftflow's own move
    mlflow_client().set_registered_model_alias(NAME, "champion", "2")  # a person's, by hand
    runs = {r["parameters"]["version"]: r for r in wait_runs(stack, 2)}
    assert {r["state"]["type"] for r in runs.values()} == {"COMPLETED"}, stack.logs()
    own, outside = runs["1"], runs["2"]
    assert "moved by peftflow (test:alice: first release); not processed again" in own["state"]["message"]
    assert not [k for k in mlflow_client().get_model_version(NAME, "1").tags if k.startswith(("eval.", "guard."))]

    tags = mlflow_client().get_model_version(NAME, "2").tags
    moves = json.loads(tags["alias.champion.history"])
    assert (moves[-1]["by"], moves[-1]["reason"]) == ("mlflow", "moved in MLflow")
    assert moves[-1]["webhook"] == outside["parameters"]["delivery_id"]
    assert str(mlflow_client().get_model_version_by_alias(NAME, "previous").version) == "1"
    assert str(mlflow_client().get_model_version_by_alias(NAME, "champion").version) == "2"  # report only
    scores = json.loads(tags["eval.demo_orders"])
    assert scores["version"] == "2" and scores["perplexity"] > 1 and scores["eval_rows"] == 8
    guard = json.loads(tags["guard.demo_general"])
    assert guard["previous_version"] == "1" and guard["passed"] and guard["loss"] == guard["previous_loss"]
    print("\n" + json.dumps({"history v2": moves, "eval.demo_orders": scores, "guard.demo_general": guard}, indent=1))


def delivery(
    alias: str, version: str, delivery_id: str, secret: str, ts: int | None = None, body: bytes | None = None
) -> tuple[dict, bytes]:
    body = (
        body
        if body is not None
        else json.dumps(
            {
                "entity": "model_version_alias",
                "action": "created",
                "timestamp": datetime.now(timezone.utc).isoformat(),
                "data": {"name": NAME, "alias": alias, "version": version},
            }
        ).encode()
    )
    ts = str(int(time.time()) if ts is None else ts)
    return {
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": ts,
        "X-MLflow-Signature": sign(secret, delivery_id, ts, body),
        "Content-Type": "application/json",
    }, body


def relayed_events(stack, since: datetime) -> list[dict]:
    """Every `peftflow.model.alias-set` event the Prefect server stored since `since`."""
    until = datetime.now(timezone.utc) + timedelta(minutes=5)
    page = api(
        stack,
        "POST",
        "/events/filter",
        json={
            "limit": 50,
            "filter": {
                "event": {"name": ["peftflow.model.alias-set"]},
                "occurred": {"since": since.isoformat(), "until": until.isoformat()},
            },
        },
    )
    events = page["events"]
    while page.get("next_page"):
        r = httpx.get(page["next_page"], timeout=30)
        r.raise_for_status()
        page = r.json()
        events += page["events"]
    return events


def test_bad_deliveries_are_refused_and_a_burst_is_relayed_once_each(stack):
    since = datetime.now(timezone.utc) - timedelta(seconds=5)
    url = f"{stack.relay}/mlflow-webhook"
    post = lambda h, b: httpx.post(url, headers=h, content=b, timeout=60)  # noqa: E731
    h, body = delivery("champion", "1", "bad-secret", "not-the-secret")
    assert post(h, body).status_code == 401
    h, body = delivery("champion", "1", "unsigned", stack.secret)
    assert post({k: v for k, v in h.items() if k != "X-MLflow-Signature"}, body).status_code == 401
    h, body = delivery("champion", "1", "stale", stack.secret, ts=int(time.time()) - 3600)
    assert post(h, body).status_code == 401
    for i, garbage in enumerate([b"\x00\xff garbage", b"{", b"[]", b'{"data": {}}']):
        assert post(*delivery("champion", "1", f"garbage-{i}", stack.secret, body=garbage)).status_code == 400
        assert post({"Content-Type": "application/json"}, garbage).status_code == 401
    assert post({}, b"x" * 200_000).status_code == 400  # over the size limit: not even read to the end
    assert httpx.get(f"{stack.relay}/health", timeout=10).json() == {"ok": True}

    burst = [delivery("canary", "1", f"burst-{i}-{uuid.uuid4()}", stack.secret) for i in range(100)]
    with ThreadPoolExecutor(16) as pool:
        first = list(pool.map(lambda d: post(*d), burst))
        replays = list(pool.map(lambda d: post(*d), burst))
    assert [r.status_code for r in first] == [200] * 100, [r.text for r in first if r.status_code != 200][:3]
    assert {r.status_code for r in replays} == {400}
    sent = {h["X-MLflow-Delivery-Id"] for h, _ in burst}
    deadline = time.time() + 60
    while len(events := relayed_events(stack, since)) < 100 and time.time() < deadline:
        time.sleep(1)
    time.sleep(2)  # anything stored late would show now
    events = relayed_events(stack, since)
    delivered = [e["payload"]["delivery_id"] for e in events]
    assert sorted(delivered) == sorted(sent), f"{len(delivered)} events for {len(sent)} deliveries"
    assert {e["resource"]["peftflow.alias"] for e in events} == {"canary"}
    # two runs in all: the refused deliveries, the burst (alias `canary`) and the flow's own move of
    # `previous` (it fires the webhook too) started none; the trigger acts on `champion` only
    assert len(flow_runs_of(stack, ON_PROMOTION)) == 2
    assert flow_runs_of(stack, "export-model/export-champion") == []  # the example's trigger ships disabled
