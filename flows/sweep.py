"""Compare before you ship: train variants of one config side by side, publish only the best.

`sweep` prepares the data once, scores the base model and the champion once, runs every variant as
its own `sweep-variant` flow run (check, train, merge, score the fine-tune; each step cached by
train key, so a repeated sweep trains only what changed), ranks them (peftflow/sweep/ranking.py)
and registers the winner alone, gated against the champion. Variants run at most `max_parallel`
at a time: each holds a slot of the strict global concurrency limit
`peftflow-sweep-<registered model>`, so they queue on the Prefect server for the accelerator.

From a deployment each variant is a run of the `sweep-variant` deployment on the GPU pool
(`PEFTFLOW_SWEEP_VARIANT_DEPLOYMENT`, default `sweep-variant/sweep-variant`); started by hand, it
runs as a subflow on a thread of this process.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.task_runners import ThreadPoolTaskRunner

from flows.gate import publish_and_gate
from flows.outputs import Trained, unless_output_gone
from flows.team_lock import ensure_limit, limit_name
from flows.variant import sweep_variant
from peftflow.config import RunConfig, demo_config
from peftflow.data import PreparedData
from peftflow.evaluation.report import EvalReport
from peftflow.evaluation.scoring import with_preference_scores
from peftflow.lineage import lineage as run_lineage
from peftflow.lineage import train_key
from peftflow.mlflow_io.versions import ModelVersionRef
from peftflow.promotion import GateDecision
from peftflow.run_dir import RunDir
from peftflow.stages import get_workflow
from peftflow.stages.workflow import RunModels
from peftflow.sweep.plan import SweepPlan, Variant, plan_sweep
from peftflow.sweep.ranking import Ranking, VariantResult, rank
from peftflow.sweep.report import report_markdown, table_rows
from tasks._policy import from_deployment
from tasks.check_training_setup import check_training_setup
from tasks.collect_variant import collect_variant
from tasks.evaluate_guard_set import evaluate_guard
from tasks.find_champion import find_champion
from tasks.finish_tracking_run import finish_tracking_run
from tasks.prepare_dataset import prepare_dataset
from tasks.resolve_models import resolve_models
from tasks.score_references import score_references
from tasks.start_tracking_run import flow_run_id, start_tracking_run
from tasks.write_sweep_report import write_sweep_report

# Variants waiting for a slot wait on a thread; the concurrency limit, not this, sets how many train.
MAX_THREADS = 16


@dataclass(frozen=True)
class SweepResult:
    name: str
    winner: str
    version: str
    champion: str | None
    promoted: bool
    rows: list[dict]
    report: str


@flow(name="sweep", task_runner=ThreadPoolTaskRunner(max_workers=MAX_THREADS))
def sweep(
    config: RunConfig = demo_config(),
    grid: dict[str, list[Any]] | None = None,
    variants: list[dict[str, Any]] | None = None,
    max_parallel: int = 1,
) -> SweepResult:
    """Train every variant of `config`, compare them on the same held-out rows, publish the best.

    Args:
        config: The base run config (the same fields as the `finetune` deployment).
        grid: Key -> values; every combination is a variant, e.g. {"lora_rank": [4, 8, 16]}.
        variants: Variants as mappings of keys (an optional `name`), crossed with the grid.
        max_parallel: Variants training at once (a Prefect global concurrency limit).
    """
    plan = plan_sweep(config, grid, variants, max_parallel)
    models = resolve_models(config)
    model = models.model
    for variant in plan.variants:  # every variant refused before any trains
        check_training_setup(variant.config, models)
    data = prepare_dataset(config, model)
    guard_data = prepare_dataset(config.guard_config(), model) if config.promotion.guard_dataset else None
    keys = {
        v.name: train_key(v.config, model.fingerprint, data.fingerprint, models.extras_fingerprint)
        for v in plan.variants
    }
    name = sweep_name(config, keys)
    work = config.resolved_output_dir() / name
    tags = {"prefect_flow_run_id": flow_run_id(), "peftflow.sweep.variants": json.dumps(keys)}
    run_id = start_tracking_run(config, data, name, tags)
    try:
        champion = find_champion(config)
        references = unless_output_gone(config, score_references, work / "references.json")(
            config, model, champion, data, str(work / "references.json")
        )
        results = run_variants(plan, keys, run_id)
        ranking = rank(results, config.promotion)
        winner = next(v for v in plan.variants if v.name == ranking.order[0].name)
        version, decision, current_champion = publish_winner(
            winner, keys[winner.name], ranking, models, data, references, champion, guard_data, run_id
        )
        metric = config.promotion.metric
        rows = table_rows(ranking, [r for r in results if r.failed], metric, plan.swept_keys)
        markdown = report_markdown(
            config.registry.name,
            rows,
            ranking,
            references.models,
            metric,
            decision.reason,
            version.version,
            current_champion,
        )
        report = write_sweep_report(run_id, str(work), markdown, rows, results, plan.swept_keys, metric)
    except BaseException:
        finish_tracking_run(run_id, "FAILED")
        raise
    finish_tracking_run(run_id)
    get_run_logger().info(markdown)
    promoted = decision.promote and current_champion == version.version
    return SweepResult(config.registry.name, winner.name, version.version, current_champion, promoted, rows, report)


def sweep_name(config: RunConfig, keys: dict[str, str]) -> str:
    """`sweep-<hash>` of the variants' train keys and how they are judged: the same variants judged
    another way (promotion, evaluation) are another sweep, with another report and run."""
    judged = [config.promotion.model_dump_json(), config.evaluation.model_dump_json()]
    return f"sweep-{hashlib.sha256(json.dumps(sorted(keys.values()) + judged).encode()).hexdigest()[:16]}"


def publish_winner(
    winner: Variant,
    key: str,
    ranking: Ranking,
    models: RunModels,
    data: PreparedData,
    references: EvalReport,
    champion: ModelVersionRef | None,
    guard_data: PreparedData | None,
    run_id: str,
) -> tuple[ModelVersionRef, GateDecision, str | None]:
    """The winner scored beside the references (base, champion), guarded, published and gated as
    finetune's fine-tune is; the gate's reason leads with the verdict against the runner-up."""
    config = winner.config
    _, adapter, merged, tuned = collect_variant(config, str(RunDir.of(config, key).path), with_models=True)
    trained = Trained(adapter, merged)
    # The champion's own training again: it has no rival but the base (as in finetune).
    rival = champion if champion and champion.tags.get("train_key") != key else None
    evaluation = EvalReport(
        tuned.metric,
        {label: s for label, s in references.models.items() if label == "base" or rival}
        | {"tuned": tuned.models["tuned"]},
    )
    # the winner scored alone: its implicit rewards taken against the sweep's base (stage dpo)
    evaluation = with_preference_scores(evaluation, get_workflow(config).preference(config))
    guard = evaluate_guard(config, models.model, trained.tuned_dir, rival, guard_data, run_id) if guard_data else None
    lineage = run_lineage(config, models, data, key, flow_run_id())
    return publish_and_gate(
        config,
        ranking.order[0].run_id,
        trained,
        evaluation,
        lineage,
        models.model.path,
        guard,
        (ranking.decided, ranking.verdict),
    )


def run_variants(plan: SweepPlan, keys: dict[str, str], sweep_run_id: str) -> list[VariantResult]:
    """Every variant's run, at most `max_parallel` at a time; a failed one (or one whose merge
    failed its check) is reported, not fatal."""
    limit = limit_name(plan.base.registry.name, kind="sweep")
    ensure_limit(limit, plan.max_parallel)
    on_pool = from_deployment()
    futures = [
        run_variant.with_options(task_run_name=f"variant {v.name}").submit(v, sweep_run_id, limit, on_pool)
        for v in plan.variants
    ]
    results = []
    for variant, future in zip(plan.variants, futures):
        state = future.wait() or future.state
        swept = {k: getattr(variant.config, k) for k in plan.swept_keys}
        if not state.is_completed():
            get_run_logger().warning("variant %s failed: %s", variant.name, state.message)
            results.append(
                VariantResult(variant.name, swept, keys[variant.name], "", failed=state.message or state.name)
            )
            continue
        run = RunDir.of(variant.config, keys[variant.name])
        run_id, adapter, merged, tuned = collect_variant(variant.config, str(run.path))
        # A merge past its tolerance would fail the gate: such a variant cannot win.
        failed = (
            ""
            if not merged or merged.passed
            else (
                f"merge fidelity check failed (max |logit diff| "
                f"{merged.max_abs_logit_diff:.3g} > {merged.tolerance:.3g})"
            )
        )
        results.append(
            VariantResult(variant.name, swept, keys[variant.name], run_id, adapter, tuned.models["tuned"], failed)
        )
    return results


@task(name="run-variant")
def run_variant(variant: Variant, sweep_run_id: str, limit: str, on_pool: bool) -> None:
    """One variant's `sweep-variant` flow run: a run of its deployment on the pool, else a subflow here.

    The slot of the sweep's limit is taken before the flow run is created, so a waiting variant
    holds no pod and no GPU; the lease is renewed while it runs, and a crashed sweep's slot comes back."""
    from prefect.concurrency.sync import concurrency

    with concurrency(limit, occupy=1, strict=True):
        if not on_pool:
            sweep_variant.with_options(flow_run_name=variant.name)(variant.config, variant.name, sweep_run_id)
            return
        from prefect.deployments import run_deployment

        name = os.environ.get("PEFTFLOW_SWEEP_VARIANT_DEPLOYMENT", "sweep-variant/sweep-variant")
        run = run_deployment(
            name,
            flow_run_name=variant.name,
            as_subflow=True,
            parameters={
                "config": variant.config.model_dump(mode="json"),
                "variant": variant.name,
                "sweep_run_id": sweep_run_id,
            },
        )
    if not run.state.is_completed():
        raise RuntimeError(
            f"variant {variant.name}: flow run {run.id} of {name} ended {run.state.name}: {run.state.message}"
        )
