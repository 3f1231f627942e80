"""Alias moves made outside peftflow (the MLflow UI, a plain `MlflowClient`), as MLflow's webhook
reports them, entered into the same `alias.<alias>.history` tags peftflow keeps (aliases.py).

Every alias move fires the webhook, peftflow's own too. peftflow's `set_alias` writes a history
entry `{at, by, reason}` with each move; that entry is the marker: a reported move that finds an
unclaimed peftflow entry for the same version and alias close to its time is peftflow's own. The
entry is claimed by adding the delivery id (`"webhook"`), so one entry answers one report. A move
nobody recorded is entered as `{at, by, reason: "moved in MLflow", webhook}`. A report whose
delivery id is already in the history was handled before (a duplicate).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from peftflow.mlflow_io.aliases import CHAMPION, HISTORY_KEEP, PREVIOUS, alias_lock, set_alias
from peftflow.mlflow_io.tracking import mlflow_client
from peftflow.mlflow_io.versions import get_version_by_alias

OUTSIDE_REASON = "moved in MLflow"
OWN_MOVE_WINDOW_S = 120  # how far apart peftflow's entry and MLflow's report may be (two clocks)


@dataclass(frozen=True)
class ReportedMove:
    kind: Literal["duplicate", "own", "outside"]
    previous: str | None  # outside moves of `champion`: the champion before the move, if known
    why: str  # one line for the flow run's log and message


def _history_key(alias: str) -> str:
    return f"alias.{alias}.history"


def _when(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _history(tags: dict[str, str], alias: str) -> list[dict]:
    try:
        entries = json.loads(tags.get(_history_key(alias), "[]"))
    except json.JSONDecodeError:
        return []
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def take(name: str, version: str, alias: str, actor: str, moved_at: str, delivery_id: str) -> ReportedMove:
    """Enter one reported move of `alias` onto `name` v`version`: claim peftflow's own entry for
    it, or append an outside entry. Run one at a time per model (the `on-promotion` deployment
    has a concurrency limit of 1): tags have no compare-and-set."""
    client = mlflow_client()
    tags = dict(client.get_model_version(name, version).tags or {})
    history = _history(tags, alias)
    if any(e.get("webhook") == delivery_id for e in history):
        return ReportedMove("duplicate", None, f"delivery {delivery_id} was handled already")
    moment = _when(moved_at)
    own = [
        e
        for e in history
        if "webhook" not in e and "at" in e and abs((_when(e["at"]) - moment).total_seconds()) <= OWN_MOVE_WINDOW_S
    ]
    if own:
        entry = min(own, key=lambda e: abs((_when(e["at"]) - moment).total_seconds()))
        entry["webhook"] = delivery_id
        client.set_model_version_tag(name, version, _history_key(alias), json.dumps(history[-HISTORY_KEEP:]))
        return ReportedMove(
            "own",
            None,
            f"{alias} -> v{version} was moved by peftflow ({entry.get('by')}: "
            f"{entry.get('reason')}); not processed again",
        )
    previous = champion_before(name, version, moment) if alias == CHAMPION else None
    history.append(
        {
            "at": moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "by": actor,
            "reason": OUTSIDE_REASON,
            "webhook": delivery_id,
        }
    )
    client.set_model_version_tag(name, version, _history_key(alias), json.dumps(history[-HISTORY_KEEP:]))
    return ReportedMove("outside", previous, f"{alias} -> v{version} {OUTSIDE_REASON} by {actor} at {moved_at}")


def champion_before(name: str, version: str, moment: datetime) -> str | None:
    """The version `champion` pointed at just before `moment`: the other version whose champion
    history has the latest entry at or before it (every move is in some version's history)."""
    latest: tuple[datetime, str] | None = None
    for mv in mlflow_client().search_model_versions(f"name='{name}'"):
        if str(mv.version) == str(version):
            continue
        for entry in _history(dict(mv.tags or {}), CHAMPION):
            at = _when(entry["at"]) if "at" in entry else None
            if at is not None and at <= moment and (latest is None or at > latest[0]):
                latest = (at, str(mv.version))
    return latest[1] if latest else None


def record_previous(name: str, version: str, previous: str | None, actor: str) -> str | None:
    """After an outside move of `champion` onto `version`: `previous` onto the champion it replaced,
    as `move_champion` would have. Under the alias lock, and only while `version` still is the
    champion; returns the version `champion` points at now (None: no champion)."""
    with alias_lock(name):
        current = get_version_by_alias(name, CHAMPION)
        if current is not None and current.version == str(version) and previous:
            set_alias(
                name, PREVIOUS, previous, reason=f"replaced as champion by v{version} ({OUTSIDE_REASON})", actor=actor
            )
    return current.version if current else None
