"""Alias moves on a registered model, each recorded on the version it lands on.

  challenger  the version published last
  champion    the version that serves; moved by the promotion gate, by approval, or by hand
  previous    the champion before the last move of champion, for a one-step rollback

Each move appends to the version's tag `alias.<alias>.history` (time, actor, reason). Moves that
change `champion` (and `previous` with it) hold one lock per registered model, so "read champion,
move previous, move champion" is one step: a file lock among the processes of this machine, or,
where an entry point installed one (`peftflow/locking.py`; flows/team_lock.py: a strict Prefect
global concurrency limit when a Prefect server is configured), a lock the whole team shares.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import AbstractContextManager

from filelock import FileLock

from peftflow.errors import UserError
from peftflow.locking import LOCK_TIMEOUT_S, team_lock
from peftflow.mlflow_io.tracking import configure_mlflow, mlflow_client
from peftflow.mlflow_io.versions import get_version_by_alias
from peftflow.paths import cache_dir

CHALLENGER, CHAMPION, PREVIOUS = "challenger", "champion", "previous"
HISTORY_KEEP = 20  # alias moves kept per version and alias (tag values are size-limited)
REASON_MAX = 300


def set_alias(name: str, alias: str, version: str, reason: str, actor: str) -> None:
    """Point `alias` at `version` and append the move to the version's `alias.<alias>.history`;
    not when the alias is already there and the last entry says the same (a rerun or retry of
    the same publish), so the history lists moves, not repeats."""
    client = mlflow_client()
    key = f"alias.{alias}.history"
    mv = client.get_model_version(name, str(version))
    try:
        history = json.loads((mv.tags or {}).get(key, "[]"))
    except json.JSONDecodeError:
        history = []
    client.set_registered_model_alias(name, alias, str(version))
    last = history[-1] if history else {}
    if alias in (mv.aliases or []) and (last.get("by"), last.get("reason")) == (actor, reason[:REASON_MAX]):
        return
    history.append(
        {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "by": actor, "reason": reason[:REASON_MAX]}
    )
    client.set_model_version_tag(name, str(version), key, json.dumps(history[-HISTORY_KEEP:]))


def alias_history(name: str, version: str, alias: str) -> list[dict[str, str]]:
    mv = mlflow_client().get_model_version(name, str(version))
    return json.loads((mv.tags or {}).get(f"alias.{alias}.history", "[]"))


def alias_versions(name: str) -> dict[str, str | None]:
    """The version each of `champion`, `previous` and `challenger` points at (None: nothing), in that order."""
    return {
        alias: (ref.version if (ref := get_version_by_alias(name, alias)) else None)
        for alias in (CHAMPION, PREVIOUS, CHALLENGER)
    }


def alias_lock(name: str) -> AbstractContextManager:
    """Serialises alias moves on one registered model (flows publishing to the same model at once):
    read champion, move previous, move champion is then one step. MLflow has no compare-and-set
    for aliases: the team lock (`peftflow.locking`) covers every machine that talks to the same
    Prefect server; without one, a file lock covers the processes of this machine only."""
    store = hashlib.sha256(f"{configure_mlflow()}\0{name}".encode()).hexdigest()[:16]
    lock = team_lock(name)
    return (
        lock
        if lock is not None
        else FileLock(str(cache_dir("locks") / f"aliases-{store}.lock"), timeout=LOCK_TIMEOUT_S)
    )


def move_champion(name: str, version: str, reason: str, actor: str) -> str:
    """Point `champion` at `version` (no gate: a decision already made, or a person's call).
    The champion it replaces becomes `previous`. Nothing moves when it already is champion."""
    version = str(version)
    mlflow_client().get_model_version(name, version)  # raises RESOURCE_DOES_NOT_EXIST for a wrong version
    with alias_lock(name):
        current = get_version_by_alias(name, CHAMPION)
        if current is not None and current.version == version:
            return version
        # `previous` first: a retry after a crash between the two moves still ends right.
        if current is not None:
            set_alias(name, PREVIOUS, current.version, reason=f"replaced as champion by v{version}", actor=actor)
        set_alias(name, CHAMPION, version, reason=reason, actor=actor)
    return version


def rollback(name: str, reason: str, actor: str) -> tuple[str, str]:
    """Swap `champion` and `previous`: the previous champion serves again, and the version rolled
    back from becomes `previous` (so a second rollback undoes the first). Returns (new champion,
    rolled-back version). The rolled-back version also gets the tag `rolled_back` with the reason.
    Under the same lock as `move_champion`: a promotion cannot land between the two moves."""
    with alias_lock(name):
        champion, previous = get_version_by_alias(name, CHAMPION), get_version_by_alias(name, PREVIOUS)
        if champion is None:
            raise UserError(f"{name}: has no champion to roll back")
        if previous is None:
            raise UserError(f"{name}: champion v{champion.version} has no `previous` version to roll back to")
        if previous.version == champion.version:
            raise UserError(
                f"{name}: `previous` and `champion` both point at v{champion.version}; nothing to roll back"
            )
        set_alias(name, CHAMPION, previous.version, reason=f"rollback from v{champion.version}: {reason}", actor=actor)
        set_alias(name, PREVIOUS, champion.version, reason=f"rolled back to v{previous.version}: {reason}", actor=actor)
        mlflow_client().set_model_version_tag(
            name,
            champion.version,
            "rolled_back",
            json.dumps(
                {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "by": actor, "reason": reason[:REASON_MAX]}
            ),
        )
    return previous.version, champion.version
