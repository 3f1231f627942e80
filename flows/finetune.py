"""The main pipeline: base model + dataset -> evaluated, registered, gated fine-tune."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow, get_run_logger

from flows.gate import publish_and_gate
from flows.outputs import drop_checkpoints, score, train_and_merge
from peftflow.config import RunConfig, demo_config
from peftflow.data import PreparedData
from peftflow.lineage import lineage as run_lineage
from peftflow.lineage import train_key
from peftflow.methods import get_method
from peftflow.run_dir import RunDir
from peftflow.stages import get_workflow
from peftflow.stages.workflow import RunModels
from peftflow.summary import harness_lines, training_notes
from tasks.add_stage_rows import add_stage_rows
from tasks.check_training_setup import check_training_setup
from tasks.evaluate_guard_set import evaluate_guard
from tasks.find_champion import find_champion
from tasks.finish_tracking_run import finish_tracking_run
from tasks.prepare_dataset import prepare_dataset
from tasks.resolve_models import resolve_models
from tasks.start_tracking_run import flow_run_id, start_tracking_run
from tasks.write_summary import write_summary


@dataclass(frozen=True)
class FinetuneResult:
    name: str
    version: str
    champion: str | None
    promoted: bool
    scores: dict[str, dict[str, float]]
    run_id: str
    summary: str


# No log_prints: under it, dill's function hashing in `datasets` (it captures the stdout of dis.dis
# to find globals) sends bytecode listings to the run's logs. The core logs through `logging`.
@flow(name="finetune")
def finetune(config: RunConfig = demo_config()) -> FinetuneResult:
    """Prepare data, train an adapter, merge it (when the method can), evaluate base vs tuned vs
    champion, publish, promote.

    Args:
        config: The run config (docs/configuration.md): the basic recipe, then groups of
            LLaMA-Factory's keys and peftflow's sections, each Defaults or Custom (its keys).
    """
    models = resolve_models(config)
    check_training_setup(config, models)
    data = training_data(config, models)
    # Prepared up front, so a bad guard set stops the run before any training.
    guard_data = prepare_dataset(config.guard_config(), models.model) if config.promotion.guard_dataset else None
    key = train_key(config, models.model.fingerprint, data.fingerprint, models.extras_fingerprint)
    lineage = run_lineage(config, models, data, key, flow_run_id())
    run_id = start_tracking_run(config, data, key, lineage)
    try:
        trained = train_and_merge(config, models, data, key, run_id)
        notes = training_notes(run_id, key, data, trained.adapter)
        if not trained.merged:
            # Prompt-family adapters have no weight delta to fold in: ship adapter + base instead.
            why = "cannot be merged" if not get_method(config).mergeable else "are not merged (merge: false)"
            notes.append(f"{config.finetuning_type} adapters {why}; published as an adapter version")
        champion = find_champion(config)
        # A rerun of the training that is already champion has no rival to beat but the base model.
        rival = champion if champion and champion.tags.get("train_key") != key else None
        evaluation = score(config, models, trained, rival, data, run_id)
        notes += harness_lines({label: s.harness for label, s in evaluation.models.items()})
        notes += get_workflow(config).summary_notes(evaluation)
        guard = (
            evaluate_guard(config, models.model, trained.tuned_dir, rival, guard_data, run_id) if guard_data else None
        )
        if guard:
            notes.append(
                f"guard set `{config.promotion.guard_dataset}`: loss {guard[0]:.4f} (fine-tune) "
                f"vs {guard[1]:.4f} ({'champion' if rival else 'base'})"
            )
        version, decision, current_champion = publish_and_gate(
            config, run_id, trained, evaluation, lineage, models.model.path, guard
        )
    except BaseException:
        finish_tracking_run(run_id, "FAILED")
        raise
    finish_tracking_run(run_id)
    drop_checkpoints(config, RunDir.of(config, key))
    summary = write_summary(version, evaluation, decision, current_champion, notes)
    get_run_logger().info(summary)
    promoted = decision.promote and current_champion == version.version
    return FinetuneResult(
        version.name,
        version.version,
        current_champion,
        promoted,
        {k: v.summary() for k, v in evaluation.models.items()},
        run_id,
        summary,
    )


def training_data(config: RunConfig, models: RunModels) -> PreparedData:
    """The prepared dataset, plus the rows the stage adds (distillation: teacher-answered prompts)."""
    data = prepare_dataset(config, models.model)
    return add_stage_rows(config, models, data) if get_workflow(config).adds_rows(config) else data
