from prefect import task

from peftflow import merge
from peftflow.config import RunConfig
from peftflow.mlflow_io import tracking
from peftflow.models.resolve import ResolvedModel
from peftflow.run_dir import RunDir
from peftflow.store import portable, save_output
from peftflow.training.run import TrainResult


def _key(context, params) -> str:
    config = params["config"]
    adapter = portable(config.storage, config.registry.name, params["adapter"].adapter_dir)
    return f"merge-{adapter}-{config.merge_tolerance}-{config.quantized_merge_tolerance}"


@task(name="merge-adapter", cache_key_fn=_key, persist_result=True)
def merge_adapter(config: RunConfig, model: ResolvedModel, adapter: TrainResult, run_id: str) -> merge.MergeResult:
    """A plain transformers checkpoint with the adapter folded in; fails past the fidelity tolerance."""
    out = RunDir.holding(adapter.adapter_dir).merged
    result = merge.merge(
        model.path,
        adapter.adapter_dir,
        out,
        config.merge_tolerance,
        train_cfg=config,
        trust_remote_code=config.trust_remote_code,
    )
    metrics = {"merge.max_abs_logit_diff": result.max_abs_logit_diff}
    if result.max_abs_logit_diff_vs_quantized is not None:
        metrics["merge.max_abs_logit_diff_vs_quantized"] = result.max_abs_logit_diff_vs_quantized
        metrics["merge.top1_agreement_vs_quantized"] = result.top1_agreement_vs_quantized
    tracking.log_metrics(run_id, metrics)
    save_output(config.storage, config.registry.name, result.merged_dir)
    return result
