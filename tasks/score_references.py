"""Score what a sweep's variants are measured against, once for the whole sweep: the base model
and the current champion, on the held-out rows every variant is scored on."""

from pathlib import Path

from prefect import task

from peftflow.config import RunConfig
from peftflow.data import PreparedData
from peftflow.evaluation.report import EvalReport
from peftflow.evaluation.scoring import compare
from peftflow.mlflow_io.downloads import local_versions
from peftflow.mlflow_io.versions import ModelVersionRef
from peftflow.models.resolve import ResolvedModel
from peftflow.store import save_output


def _key(context, params) -> str:
    champion, config = params["champion"], params["config"]
    rival = f"{champion.name}/{champion.version}" if champion else "none"
    return (
        f"references-{params['model'].fingerprint}-{params['data'].fingerprint}-{rival}-{config.template}-"
        f"{config.evaluation.model_dump_json()}"
    )


@task(name="score-references", cache_key_fn=_key, persist_result=True)
def score_references(
    config: RunConfig, model: ResolvedModel, champion: ModelVersionRef | None, data: PreparedData, out: str
) -> EvalReport:
    """`base` and, when there is one, `champion`, written to `out` (references.json)."""
    versions, bases = local_versions({"champion": champion} if champion else {})
    models = {"base": model.path} | versions
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    report = compare(models, data.path, config, Path(out), base_model_dir=model.path, bases=bases)
    save_output(config.storage, config.registry.name, out)
    return report
