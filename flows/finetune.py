"""The main pipeline: base model + dataset -> evaluated, registered, gated fine-tune."""

from __future__ import annotations

from dataclasses import dataclass, replace

from prefect import flow, get_run_logger

from flows.approval import request_approval
from flows.stages import drop_checkpoints, unless_cached_output_gone
from peftflow.config import RunConfig, demo_config
from peftflow.data import PreparedData
from peftflow.lineage import lineage as run_lineage
from peftflow.lineage import stage_dir, train_key
from peftflow.methods import get_method
from peftflow.models.resolve import ResolvedModel
from peftflow.summary import harness_lines, training_notes
from tasks.apply_approval import apply_approval
from tasks.check_training_setup import check_training_setup
from tasks.evaluate_guard_set import evaluate_guard
from tasks.evaluate_models import evaluate_models
from tasks.find_champion import find_champion
from tasks.finish_tracking_run import finish_tracking_run
from tasks.label_prompts import label_prompts
from tasks.merge_adapter import merge_adapter
from tasks.prepare_dataset import prepare_dataset
from tasks.promote_version import promote_version
from tasks.publish_version import publish_version
from tasks.resolve_model import resolve_model
from tasks.resolve_student import resolve_student
from tasks.resolve_teacher import resolve_teacher
from tasks.start_tracking_run import flow_run_id, start_tracking_run
from tasks.train_adapter import train_adapter
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
    model, teacher = resolve_models(config)
    check_training_setup(config, model)
    data = training_data(config, model, teacher)
    # Prepared up front, so a bad guard set stops the run before any training.
    guard_data = prepare_dataset(config.guard_config(), model) if config.promotion.guard_dataset else None
    key = train_key(config, model.fingerprint, data.fingerprint, teacher.fingerprint if teacher else "")
    lineage = run_lineage(config, model, data, key, flow_run_id(), teacher)
    run_id = start_tracking_run(config, data, key, lineage)
    work = stage_dir(config, key)
    try:
        adapter = unless_cached_output_gone(config, train_adapter, work / "adapter")(
            config, model, data, key, run_id, teacher)
        adapter = replace(adapter, adapter_dir=str(work / "adapter"))   # cached on another machine: here now
        notes = training_notes(run_id, key, data, adapter)
        if config.should_merge:
            merged = unless_cached_output_gone(config, merge_adapter, work / "merged")(config, model, adapter, run_id)
            merged = replace(merged, merged_dir=str(work / "merged"))
            tuned_dir = merged.merged_dir
        else:
            # Prompt-family adapters have no weight delta to fold in: ship adapter + base instead.
            merged, tuned_dir = None, adapter.adapter_dir
            why = "cannot be merged" if not get_method(config).mergeable else "are not merged (merge: false)"
            notes.append(f"{config.finetuning_type} adapters {why}; published as an adapter version")
        champion = find_champion(config)
        # A rerun of the training that is already champion has no rival to beat but the base model.
        rival = champion if champion and champion.tags.get("train_key") != key else None
        evaluation = unless_cached_output_gone(config, evaluate_models, work / "eval_report.json")(
            config, model, tuned_dir, rival, data, run_id, teacher)
        notes += harness_lines({label: s.harness for label, s in evaluation.models.items()})
        if teacher:
            retention = evaluation.retention()
            notes.append(f"student keeps {retention:.1%} of the teacher's {evaluation.metric} (teacher retention)")
        guard = evaluate_guard(config, model, tuned_dir, rival, guard_data, run_id) if guard_data else None
        if guard:
            notes.append(f"guard set `{config.promotion.guard_dataset}`: loss {guard[0]:.4f} (fine-tune) "
                         f"vs {guard[1]:.4f} ({'champion' if rival else 'base'})")
        version = publish_version(config, run_id, adapter, merged, evaluation, lineage, model.path)
        decision, current_champion = promote_version(config, version, evaluation, lineage["prefect_flow_run_id"],
                                                     merged.passed if merged else True, guard)
        if decision.promote and config.promotion.auto_promote and config.promotion.require_approval:
            approved, why, who = request_approval(version, evaluation, decision, config.promotion.approval_timeout_s)
            decision, current_champion = apply_approval(version, decision, approved, why, who)
    except BaseException:
        finish_tracking_run(run_id, "FAILED")
        raise
    finish_tracking_run(run_id)
    drop_checkpoints(config, work)
    summary = write_summary(version, evaluation, decision, current_champion, notes)
    get_run_logger().info(summary)
    promoted = decision.promote and current_champion == version.version
    return FinetuneResult(version.name, version.version, current_champion, promoted,
                          {k: v.summary() for k, v in evaluation.models.items()}, run_id, summary)


def resolve_models(config: RunConfig) -> tuple[ResolvedModel, ResolvedModel | None]:
    """(the model the run trains, its teacher): the base, or in a distillation run the student (given,
    or the teacher pruned) and the teacher."""
    teacher = resolve_teacher(config) if config.stage == "distill" else None
    model = (resolve_student(config, teacher) if teacher
             else resolve_model(config.model_name_or_path, config.allow_pickle_weights, config.storage))
    return model, teacher


def training_data(config: RunConfig, model: ResolvedModel, teacher: ResolvedModel | None) -> PreparedData:
    """The prepared dataset; with kd_unlabeled_dataset, plus the teacher's answers to those prompts."""
    data = prepare_dataset(config, model)
    return label_prompts(config, teacher, model, data) if config.kd_unlabeled_dataset else data
