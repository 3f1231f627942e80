"""The promotion lock the team shares (flows/team_lock.py): two processes with different
PEFTFLOW_HOMEs (so different file locks: two machines) promote versions of one registered model at
once against one registry and one real Prefect server; every move then replaced the champion it
read, so `champion` / `previous` end consistent. Without the server lock the two read the same
champion and both name it `previous` (checked by hand: see docs/operations.md)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from peftflow.mlflow_io.aliases import alias_history
from peftflow.mlflow_io.tracking import configure_mlflow
from tests.integration.stack import ROOT

pytestmark = pytest.mark.integration

# One machine's promotions: `import flows` is what every entry point runs first (it installs the lock).
PROMOTER = """
import pathlib, sys, time
import flows
from peftflow.mlflow_io.aliases import move_champion
from peftflow.mlflow_io.tracking import mlflow_client
name, go, *versions = sys.argv[1:]
mlflow_client().get_registered_model(name)
pathlib.Path(go + "." + versions[0]).touch()         # ready: imports done, registry open
while not pathlib.Path(go).exists():
    time.sleep(0.01)
for v in versions:
    move_champion(name, v, "concurrent promotion", actor="machine-" + versions[0])
"""


def _promote_at_once(tmp_path, name: str, batches: list[list[str]]) -> None:
    from prefect.settings import get_current_settings

    api = get_current_settings().api.url
    assert api, "the harness sets PREFECT_API_URL"
    go, procs = tmp_path / "go", []
    for i, versions in enumerate(batches):
        env = {
            **os.environ,
            "PEFTFLOW_HOME": str(tmp_path / f"home-{i}"),
            "PREFECT_API_URL": api,
            "PYTHONPATH": str(ROOT),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", PROMOTER, name, str(go), *versions],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    deadline = time.time() + 120
    while not all(go.with_name(f"go.{b[0]}").exists() for b in batches) and time.time() < deadline:
        time.sleep(0.05)
    go.touch()  # both start their moves now
    for p in procs:
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0, out[-3000:]


def _replaced(name: str, versions: list[str]) -> dict[str, str]:
    """promoted version -> the champion it replaced, from the `previous` history each move wrote."""
    out = {}
    for v in versions:
        for entry in alias_history(name, v, "previous"):
            m = re.fullmatch(r"replaced as champion by v(\d+)", entry["reason"])
            assert m and m[1] not in out, f"v{m[1] if m else '?'} replaced two champions: {entry}"
            out[m[1]] = v
    return out


def test_two_homes_promoting_at_once_leave_champion_and_previous_consistent(harness, env, tmp_path):
    configure_mlflow()
    client, name = MlflowClient(), "team-lock"
    client.create_registered_model(name)
    for i in range(9):
        client.create_model_version(name, source=(tmp_path / f"v{i}").as_uri())
    client.set_registered_model_alias(name, "champion", "1")
    batches = [["2", "4", "6", "8"], ["3", "5", "7", "9"]]
    _promote_at_once(tmp_path, name, batches)

    replaced = _replaced(name, [str(v) for v in range(1, 10)])
    promoted = sorted(v for b in batches for v in b)
    assert sorted(replaced) == promoted  # every move replaced a champion ...
    assert len(set(replaced.values())) == len(promoted)  # ... each a different one: no lost move
    chain, v = ["1"], "1"  # one line of champions, v1 to the last
    successor = {old: new for new, old in replaced.items()}
    while v in successor:
        v = successor[v]
        chain.append(v)
    assert len(chain) == 9, chain
    champion = str(client.get_model_version_by_alias(name, "champion").version)
    previous = str(client.get_model_version_by_alias(name, "previous").version)
    assert champion == chain[-1] and previous == chain[-2]

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect:  # the server-side lock: one slot, free again
        limit = prefect.read_global_concurrency_limit_by_name(f"peftflow-aliases-{name}")
    assert (limit.limit, limit.active_slots) == (1, 0)
