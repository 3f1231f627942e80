"""Tasks of the `on-promotion` flow: enter an alias move MLflow reported, score the new champion
on the guard set, move `champion` back."""

from __future__ import annotations

import json

from prefect import task

from peftflow import evaluate, outside_moves, registry
from peftflow.config import RunConfig
from peftflow.data import prepare_dataset


@task(name="take-reported-move")
def take_reported_move(name: str, version: str, alias: str, actor: str, moved_at: str,
                       delivery_id: str) -> outside_moves.ReportedMove:
    registry.configure_mlflow()
    return outside_moves.take(name, version, alias, actor, moved_at, delivery_id)


@task(name="evaluate-guard-set-of-version")
def guard_version(config: RunConfig, name: str, version: str, previous: str | None) -> dict:
    """Guard-set loss of `version` and of the previous champion (the gate's check, for a move
    made by hand); recorded on `version` as the tag `guard.<guard_dataset>`."""
    registry.configure_mlflow()
    models = {"champion": registry.download_model_dir(f"models:/{name}/{version}")}
    if previous:
        models["previous"] = registry.download_model_dir(f"models:/{name}/{previous}")
    data = prepare_dataset(config.guard_config(), models["champion"])  # the version's own tokenizer
    losses = evaluate.guard_losses(models, data.path, config)
    passed, verdict = outside_moves.guard_verdict(losses["champion"], losses.get("previous"),
                                                  config.promotion.guard_tolerance)
    result = {"guard_dataset": config.promotion.guard_dataset, "loss": losses["champion"],
              "previous_version": previous, "previous_loss": losses.get("previous"),
              "tolerance": config.promotion.guard_tolerance, "passed": passed, "verdict": verdict}
    registry._client().set_model_version_tag(name, version, f"guard.{config.promotion.guard_dataset}"[:250],
                                              json.dumps(result))
    return result


@task(name="roll-back-champion")
def roll_back(name: str, reason: str, actor: str) -> tuple[str, str]:
    registry.configure_mlflow()
    return registry.rollback(name, reason, actor)
