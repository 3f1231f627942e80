from pathlib import Path

from prefect import task

from peftflow import merge, registry
from peftflow.config import RunConfig
from peftflow.models import ResolvedModel
from peftflow.train import TrainResult


def _key(context, params) -> str:
    return f"merge-{params['adapter'].adapter_dir}-{params['config'].merge_tolerance}"


@task(name="merge-adapter", cache_key_fn=_key, persist_result=True)
def merge_adapter(config: RunConfig, model: ResolvedModel, adapter: TrainResult, run_id: str) -> merge.MergeResult:
    """A plain transformers checkpoint with the adapter folded in; fails past the fidelity tolerance."""
    out = Path(adapter.adapter_dir).parent / "merged"
    result = merge.merge(model.path, adapter.adapter_dir, out, config.merge_tolerance, config.trust_remote_code)
    registry.configure_mlflow()
    registry.log_metrics(run_id, {"merge.max_abs_logit_diff": result.max_abs_logit_diff})
    return result
