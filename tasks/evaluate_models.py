from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact

from peftflow import evaluate, registry
from peftflow.config import RunConfig
from peftflow.data import PreparedData
from peftflow.merge import MergeResult
from peftflow.models import ResolvedModel
from peftflow.registry import ModelVersionRef


def _key(context, params) -> str:
    champion = params["champion"]
    rival = f"{champion.name}/{champion.version}" if champion else "none"
    return (f"evaluate-{params['merged'].merged_dir}-{params['data'].fingerprint}-{rival}-"
            f"{params['config'].template}-{params['config'].evaluation.model_dump_json()}")


@task(name="find-champion")
def find_champion(config: RunConfig) -> ModelVersionRef | None:
    registry.configure_mlflow()
    return registry.get_version_by_alias(config.registry.name, "champion")


@task(name="evaluate-models", cache_key_fn=_key, persist_result=True)
def evaluate_models(config: RunConfig, model: ResolvedModel, merged: MergeResult, champion: ModelVersionRef | None,
                    data: PreparedData, run_id: str) -> evaluate.EvalReport:
    """Base, fine-tune and the current champion, scored on the same held-out rows."""
    models = {"base": model.path, "tuned": merged.merged_dir}
    if champion:
        models["champion"] = registry.download_model_dir(champion.uri)
    report = evaluate.compare(models, data.path, config, Path(merged.merged_dir).parent / "eval_report.json")
    registry.configure_mlflow()
    registry.log_metrics(run_id, report.flat_metrics())
    registry.log_artifact(run_id, str(Path(merged.merged_dir).parent / "eval_report.json"))
    create_table_artifact(
        key="evaluation",
        table=[{"model": label, **s.summary()} for label, s in report.models.items()],
        description=f"Held-out scores ({report.metric})",
    )
    return report
