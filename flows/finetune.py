"""The main pipeline: base model + dataset -> evaluated, registered, gated fine-tune."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import flow

from peftflow.config import RunConfig
from peftflow.keys import code_version, stage_dir, train_key
from peftflow.methods import method_name
from tasks.evaluate_models import evaluate_models, find_champion
from tasks.merge_adapter import merge_adapter
from tasks.prepare_dataset import prepare_dataset
from flows.approval import request_approval
from tasks.publish_version import apply_approval, promote_version, publish_version, write_summary
from tasks.resolve_model import resolve_model
from tasks.tracking import finish_tracking_run, flow_run_id, start_tracking_run
from tasks.train_adapter import train_adapter


@dataclass(frozen=True)
class FinetuneResult:
    name: str
    version: str
    champion: str | None
    promoted: bool
    scores: dict[str, dict[str, float]]
    run_id: str
    summary: str


@flow(name="finetune", log_prints=True)
def finetune(config: RunConfig = RunConfig()) -> FinetuneResult:
    """Prepare data, train an adapter, merge it, evaluate base vs tuned vs champion, publish, promote.

    Args:
        config: The run config: LLaMA-Factory's training keys plus peftflow's `registry`,
            `promotion` and `evaluation` sections (docs/configuration.md).
    """
    model = resolve_model(config.model_name_or_path)
    data = prepare_dataset(config, model)
    key = train_key(config, model.fingerprint, data.fingerprint)
    lineage = {
        "base_model": config.model_name_or_path, "base_model_fingerprint": model.fingerprint,
        "data_fingerprint": data.fingerprint, "config_fingerprint": config.fingerprint(),
        "method": method_name(config), "prefect_flow_run_id": flow_run_id(), "code_version": code_version(),
        "train_key": key,
    }
    run_id = start_tracking_run(config, data, key, lineage)
    work = stage_dir(config, key)
    try:
        adapter = _unless_cached_output_gone(train_adapter, work / "adapter")(config, model, data, key, run_id)
        merged = _unless_cached_output_gone(merge_adapter, work / "merged")(config, model, adapter, run_id)
        champion = find_champion(config)
        # A rerun of the training that is already champion has no rival to beat but the base model.
        rival = champion if champion and champion.tags.get("train_key") != key else None
        evaluation = _unless_cached_output_gone(evaluate_models, work / "eval_report.json")(
            config, model, merged, rival, data, run_id)
        version = publish_version(config, run_id, adapter, merged, evaluation, lineage)
        decision, current_champion = promote_version(config, version, evaluation, lineage["prefect_flow_run_id"],
                                                     merged.passed)
        if decision.promote and config.promotion.auto_promote and config.promotion.require_approval:
            approved, why, who = request_approval(version, evaluation, decision, config.promotion.approval_timeout_s)
            decision, current_champion = apply_approval(version, decision, approved, why, who)
    except BaseException:
        finish_tracking_run(run_id, "FAILED")
        raise
    finish_tracking_run(run_id)
    notes = [f"MLflow run `{run_id}`; training key `{key}`",
             f"{data.train_rows} train / {data.eval_rows} held-out rows; {data.dropped} dropped"]
    summary = write_summary(config, version, evaluation, decision, current_champion, notes)
    print(summary)
    promoted = decision.promote and current_champion == version.version
    return FinetuneResult(version.name, version.version, current_champion, promoted,
                          {k: v.summary() for k, v in evaluation.models.items()}, run_id, summary)


def _unless_cached_output_gone(stage, output: Path):
    """A cached result is only as good as the files it names: recompute when they were deleted."""
    return stage if output.exists() else stage.with_options(refresh_cache=True)
