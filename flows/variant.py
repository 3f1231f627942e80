"""One variant of a sweep (flows/sweep.py): check, train, merge and score the fine-tune, each stage
cached by train key as in `finetune`. The sweep scores the base and champion once and publishes
only its winner, so a variant registers nothing; it leaves its results in its stage dir
(peftflow/sweep/outcome.py) and, with a run store, there too."""

from __future__ import annotations

from dataclasses import replace

from prefect import flow

from flows.stages import drop_checkpoints, unless_cached_output_gone
from peftflow.config import RunConfig, demo_config
from peftflow.lineage import lineage as run_lineage
from peftflow.lineage import stage_dir, train_key
from tasks.check_training_setup import check_training_setup
from tasks.evaluate_models import evaluate_models
from tasks.finish_tracking_run import finish_tracking_run
from tasks.merge_adapter import merge_adapter
from tasks.prepare_dataset import prepare_dataset
from tasks.record_variant import record_variant
from tasks.resolve_model import resolve_model
from tasks.start_tracking_run import flow_run_id, start_tracking_run
from tasks.train_adapter import train_adapter


@flow(name="sweep-variant")
def sweep_variant(config: RunConfig = demo_config(), variant: str = "", sweep_run_id: str = "") -> str:
    """Train and score one variant; returns its stage dir.

    Args:
        config: The variant's whole run config.
        variant: Its name in the sweep.
        sweep_run_id: The sweep's MLflow run: this variant's run is nested under it.
    """
    model = resolve_model(config.model_name_or_path, config.allow_pickle_weights, config.storage)
    check_training_setup(config, model)
    data = prepare_dataset(config, model)  # cached by fingerprint: the sweep prepared it
    key = train_key(config, model.fingerprint, data.fingerprint)
    lineage = run_lineage(config, model, data, key, flow_run_id()) | {"peftflow.sweep.variant": variant}
    run_id = start_tracking_run(config, data, key, lineage, parent_run_id=sweep_run_id or None)
    work = stage_dir(config, key)
    try:
        adapter = unless_cached_output_gone(config, train_adapter, work / "adapter")(config, model, data, key, run_id)
        adapter = replace(adapter, adapter_dir=str(work / "adapter"))
        merged = None
        if config.should_merge:
            merged = unless_cached_output_gone(config, merge_adapter, work / "merged")(config, model, adapter, run_id)
            merged = replace(merged, merged_dir=str(work / "merged"))
        tuned_dir = merged.merged_dir if merged else adapter.adapter_dir
        unless_cached_output_gone(config, evaluate_models, work / "tuned_report.json")(
            config, model, tuned_dir, None, data, run_id, score_base=False)
        record_variant(config, str(work), run_id, adapter, merged)
    except BaseException:
        finish_tracking_run(run_id, "FAILED")
        raise
    finish_tracking_run(run_id)
    drop_checkpoints(config, work)  # the adapter is all a later publish needs; checkpoints only resume
    return str(work)

