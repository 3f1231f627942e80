"""React to an alias move MLflow reported (deployment `on-promotion`, triggered by the event
`peftflow.model.alias-set` that `peftflow relay` emits for each `model_version_alias.created`).

A move of `champion` that peftflow made itself is recognised and left alone. A move made outside
peftflow (the MLflow UI, a plain `MlflowClient`) gets what `peftflow promote` gives: an entry in the
version's alias history ("moved in MLflow"), `previous` on the champion it replaced, the held-out
scores (the `evaluate-model` flow, tag `eval.<dataset>`) and, with `promotion.guard_dataset`, the
guard-set check against the previous champion (tag `guard.<guard_dataset>`). A failed guard check
is reported, or with `promotion.guard_on_manual: rollback` undone (`champion` back, with the reason).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed

from flows.evaluate_model import evaluate_model
from peftflow.config import RunConfig
from peftflow.mlflow_io.aliases import CHAMPION
from peftflow.mlflow_io.outside_moves import OUTSIDE_REASON
from tasks.guard_version import guard_version
from tasks.record_previous_champion import record_previous_champion
from tasks.roll_back_champion import roll_back_champion
from tasks.start_tracking_run import flow_run_id
from tasks.take_reported_move import take_reported_move


@flow(name="on-promotion", log_prints=True)
def on_promotion(
    name: str,
    version: str,
    alias: str = CHAMPION,
    actor: str = "mlflow",
    moved_at: str = "",
    delivery_id: str = "",
    config: RunConfig = RunConfig(),
):
    """Record, score and guard a `champion` moved outside peftflow.

    Args:
        name: Registered model (the event payload's `name`).
        version: The version the alias now points at.
        alias: The alias that moved; only `champion` is acted on.
        actor: Who moved it, as far as MLflow says (its webhook names no user: `mlflow`).
        moved_at: When MLflow reported the move (ISO 8601); empty (a run started by hand): now.
        delivery_id: MLflow's delivery id; a delivery is handled once. Empty: this flow run's id.
        config: The team's run config for this registered model: its dataset and `evaluation`
            section score the version, `promotion.guard_*` guard it.
    """
    if alias != CHAMPION:
        return Completed(message=f"{alias} -> v{version} on {name}: only `champion` moves are acted on")
    if name != config.registry.name:
        return Completed(message=f"{name} is not this deployment's model ({config.registry.name}); nothing done")
    moved_at = moved_at or datetime.now(timezone.utc).isoformat()
    delivery_id = delivery_id or f"flow-run-{flow_run_id()}"
    move = take_reported_move(name, version, alias, actor, moved_at, delivery_id)
    print(move.why)
    if move.kind != "outside":
        return Completed(message=move.why)
    who = f"prefect flow run {flow_run_id()}"
    current = record_previous_champion(name, version, move.previous, who)
    if current != version:
        now = f"v{current}" if current else "nothing"
        return Completed(message=f"{move.why}; champion points at {now} since: recorded only")
    scores = evaluate_model(name, version, config)
    guard = guard_version(config, name, version, move.previous) if config.promotion.guard_dataset else None
    outcome = "kept"
    if guard and not guard["passed"] and config.promotion.guard_on_manual == "rollback" and move.previous:
        roll_back_champion(name, f"guard check after a move in MLflow: {guard['verdict']}", who)
        outcome = f"rolled back to v{move.previous}"
    summary = _summary(name, version, moved_at, actor, move.previous, scores, guard, outcome)
    create_markdown_artifact(
        key="on-promotion", markdown=_markdown(summary), description=f"{name} v{version} moved in MLflow"
    )
    print(json.dumps(summary))
    guard_line = f"; {guard['verdict']}" if guard else ""
    previous = f"v{move.previous}" if move.previous else "none"
    return Completed(
        message=f"{move.why}; previous {previous}; held-out loss {scores['loss']}{guard_line}; champion {outcome}",
        data=summary,
    )


def _summary(
    name: str,
    version: str,
    moved_at: str,
    actor: str,
    previous: str | None,
    scores: dict,
    guard: dict | None,
    outcome: str,
) -> dict:
    """What the flow run returns and shows: the move, the held-out scores, the guard check, the outcome."""
    return {
        "name": name,
        "version": version,
        "moved_at": moved_at,
        "actor": actor,
        "previous": previous,
        "scores": {k: scores[k] for k in ("loss", "perplexity", "score")},
        "guard": guard,
        "champion": outcome,
    }


def _markdown(s: dict) -> str:
    guard = s["guard"]["verdict"] + ("" if s["guard"]["passed"] else " (failed)") if s["guard"] else "no guard set"
    return (
        f"# {s['name']} v{s['version']}: champion {OUTSIDE_REASON}\n\n"
        f"- moved at {s['moved_at']} by {s['actor']}; previous champion: "
        f"{'v' + s['previous'] if s['previous'] else 'none'}\n"
        f"- held-out: loss {s['scores']['loss']}, perplexity {s['scores']['perplexity']}, "
        f"score {s['scores']['score']}\n- guard: {guard}\n- champion: {s['champion']}\n"
    )
