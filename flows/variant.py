"""One variant of a sweep (flows/sweep.py): check, train, merge and score the fine-tune, each step
cached by train key as in `finetune`. The sweep scores the base and champion once and publishes
only its winner, so a variant registers nothing; it leaves its results in its run dir
(peftflow/sweep/outcome.py) and, with a run store, there too."""

from __future__ import annotations

from prefect import flow

from flows.outputs import drop_checkpoints, score, train_and_merge
from peftflow.config import RunConfig, demo_config
from peftflow.lineage import lineage as run_lineage
from peftflow.lineage import train_key
from peftflow.run_dir import RunDir
from tasks.check_training_setup import check_training_setup
from tasks.finish_tracking_run import finish_tracking_run
from tasks.prepare_dataset import prepare_dataset
from tasks.record_variant import record_variant
from tasks.resolve_models import resolve_models
from tasks.start_tracking_run import flow_run_id, start_tracking_run


@flow(name="sweep-variant")
def sweep_variant(config: RunConfig = demo_config(), variant: str = "", sweep_run_id: str = "") -> str:
    """Train and score one variant; returns its run dir.

    Args:
        config: The variant's whole run config.
        variant: Its name in the sweep.
        sweep_run_id: The sweep's MLflow run: this variant's run is nested under it.
    """
    models = resolve_models(config)
    check_training_setup(config, models)
    data = prepare_dataset(config, models.model)  # cached by fingerprint: the sweep prepared it
    key = train_key(config, models.model.fingerprint, data.fingerprint, models.extras_fingerprint)
    lineage = run_lineage(config, models, data, key, flow_run_id()) | {"peftflow.sweep.variant": variant}
    run_id = start_tracking_run(config, data, key, lineage, parent_run_id=sweep_run_id or None)
    run = RunDir.of(config, key)
    try:
        trained = train_and_merge(config, models, data, key, run_id)
        score(config, models, trained, None, data, run_id, score_base=False)
        record_variant(config, str(run.path), run_id, trained.adapter, trained.merged)
    except BaseException:
        finish_tracking_run(run_id, "FAILED")
        raise
    finish_tracking_run(run_id)
    drop_checkpoints(config, run)  # the adapter is all a later publish needs; checkpoints only resume
    return str(run.path)
