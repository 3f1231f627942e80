from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact

from peftflow import evaluate, harness, registry
from peftflow.config import RunConfig
from peftflow.data import PreparedData
from peftflow.models import ResolvedModel
from peftflow.registry import ModelVersionRef


def _key(context, params) -> str:
    champion = params["champion"]
    rival = f"{champion.name}/{champion.version}" if champion else "none"
    rival += f"-teacher-{params['teacher'].fingerprint}" if params.get("teacher") else ""
    return (f"evaluate-{params['tuned_dir']}-{params['data'].fingerprint}-{rival}-"
            f"{params['config'].template}-{params['config'].evaluation.model_dump_json()}")


@task(name="find-champion")
def find_champion(config: RunConfig) -> ModelVersionRef | None:
    registry.configure_mlflow()
    return registry.get_version_by_alias(config.registry.name, "champion")


@task(name="evaluate-models", cache_key_fn=_key, persist_result=True)
def evaluate_models(config: RunConfig, model: ResolvedModel, tuned_dir: str, champion: ModelVersionRef | None,
                    data: PreparedData, run_id: str, teacher: ResolvedModel | None = None) -> evaluate.EvalReport:
    """Base, fine-tune and the current champion, scored on the same held-out rows.

    `tuned_dir` is the merged model, or the adapter dir of a method that cannot be merged
    (scored as base + adapter). In a distillation run `base` is the student before training and
    the teacher is scored too."""
    models = {"teacher": teacher.path} if teacher else {}
    models |= {"base": model.path, "tuned": tuned_dir}
    if champion:
        models["champion"] = registry.download_model_dir(champion.uri)
    out = Path(tuned_dir).parent / "eval_report.json"
    report = evaluate.compare(models, data.path, config, out, base_model_dir=model.path)
    if config.evaluation.harness_tasks:
        report = harness.score_models(report, models, data.path, config, Path(tuned_dir).parent, model.path)
        report.to_json(out)
    registry.configure_mlflow()
    registry.log_metrics(run_id, report.flat_metrics())
    registry.log_artifact(run_id, str(out))
    create_table_artifact(
        key="evaluation",
        table=[{"model": label, **s.summary(), **s.harness} for label, s in report.models.items()],
        description=f"Held-out scores ({report.metric})",
    )
    return report


@task(name="evaluate-guard-set")
def evaluate_guard(config: RunConfig, model: ResolvedModel, tuned_dir: str, champion: ModelVersionRef | None,
                   guard: PreparedData, run_id: str) -> tuple[float, float]:
    """(fine-tune, incumbent) loss on the guard set; the incumbent is the champion, else the base."""
    incumbent = registry.download_model_dir(champion.uri) if champion else model.path
    losses = evaluate.guard_losses({"tuned": tuned_dir, "incumbent": incumbent}, guard.path, config,
                                   base_model_dir=model.path)
    registry.configure_mlflow()
    registry.log_metrics(run_id, {f"guard.{label}.loss": v for label, v in losses.items()})
    return losses["tuned"], losses["incumbent"]

