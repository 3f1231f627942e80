from prefect import task
from prefect.artifacts import create_table_artifact

from peftflow.config import RunConfig
from peftflow.data import PreparedData
from peftflow.evaluation import harness
from peftflow.evaluation.report import EvalReport
from peftflow.evaluation.scoring import compare
from peftflow.mlflow_io import tracking
from peftflow.mlflow_io.downloads import local_versions
from peftflow.mlflow_io.versions import ModelVersionRef
from peftflow.run_dir import RunDir
from peftflow.stages import get_workflow
from peftflow.stages.workflow import RunModels
from peftflow.store import portable, save_output


def _key(context, params) -> str:
    champion = params["champion"]
    rival = f"{champion.name}/{champion.version}" if champion else "none"
    rival += "".join(f"-{role}-{m.fingerprint}" for role, m in params["models"].extras.items())
    config = params["config"]
    tuned = portable(config.storage, config.registry.name, params["tuned_dir"])
    tuned_only = "" if params.get("score_base", True) else "-tuned-only"
    judged = f"{config.template}-{config.evaluation.model_dump_json()}"
    return f"evaluate-{tuned}-{params['data'].fingerprint}-{rival}-{judged}{tuned_only}"


@task(name="evaluate-models", cache_key_fn=_key, persist_result=True)
def evaluate_models(
    config: RunConfig,
    models: RunModels,
    tuned_dir: str,
    champion: ModelVersionRef | None,
    data: PreparedData,
    run_id: str,
    score_base: bool = True,
) -> EvalReport:
    """Base, fine-tune and the current champion, scored on the same held-out rows.

    `tuned_dir` is the merged model, or the adapter dir of a method that cannot be merged
    (scored as base + adapter). The stage may add models of its own (a distillation run scores
    the teacher; `base` is then the student before training). `score_base=False` (a sweep
    variant: the sweep scores the base once) scores the fine-tune alone, into `tuned_report.json`."""
    model, workflow = models.model, get_workflow(config)
    scored = workflow.evaluation_models(models)
    scored |= ({"base": model.path} if score_base else {}) | {"tuned": tuned_dir}
    versions, bases = local_versions({"champion": champion} if champion else {})
    scored |= versions
    run = RunDir.holding(tuned_dir)
    out = run.report(score_base)
    preference = workflow.preference(config)
    report = compare(scored, data.path, config, out, base_model_dir=model.path, bases=bases, preference=preference)
    if config.evaluation.harness_tasks:
        report = harness.score_models(report, scored, data.path, config, run.path, model.path, bases)
        report.to_json(out)
    save_output(config.storage, config.registry.name, out)
    tracking.log_metrics(run_id, report.flat_metrics())
    tracking.log_artifact(run_id, str(out))
    create_table_artifact(
        key="evaluation",
        table=[{"model": label, **s.summary(), **s.harness} for label, s in report.models.items()],
        description=f"Held-out scores ({report.metric})",
    )
    return report
