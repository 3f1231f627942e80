"""Retrain when something changed: data, base model or config, compared with the champion's lineage.

Deployments: `retrain-nightly` (cron) and `retrain-on-data` (event `peftflow.dataset.updated`,
whose payload fills `dataset` / `dataset_dir`). Unchanged inputs end the run early in a
Completed state whose message says why; training, and its GPU slot, never start.

From a deployment, the check runs in a light job (no GPU requested) and training is handed to the
`finetune` deployment (`PEFTFLOW_FINETUNE_DEPLOYMENT`, default `finetune/finetune`), whose job
gets the GPU; started by hand, training runs as a subflow in the same process.
"""

from __future__ import annotations

import os

from prefect import flow
from prefect.states import Completed

from flows.finetune import finetune
from peftflow.config import RunConfig, demo_config
from peftflow.stages import get_workflow
from tasks._policy import from_deployment
from tasks.find_champion import find_champion
from tasks.prepare_dataset import prepare_dataset
from tasks.resolve_models import resolve_models

FINGERPRINTS = ("data_fingerprint", "base_model_fingerprint", "config_fingerprint")


def with_overrides(config: RunConfig, dataset: str | None, dataset_dir: str | None) -> RunConfig:
    """Event payload values replace the config's; empty strings (a missing payload key renders as
    "") leave it alone."""
    update = {k: v.strip() for k, v in (("dataset", dataset), ("dataset_dir", dataset_dir)) if v and v.strip()}
    return config.model_validate({**config.model_dump(), **update}) if update else config


def changed_fingerprints(current: dict[str, str], champion_tags: dict[str, str]) -> list[str]:
    return [k for k in FINGERPRINTS if champion_tags.get(k) != current[k]]


@flow(name="retrain", log_prints=True)
def retrain(
    config: RunConfig = demo_config(), dataset: str | None = None, dataset_dir: str | None = None, force: bool = False
):
    """Fine-tune again only if the data, base model or config differ from the champion's.

    Args:
        config: The run config (the same fields as the `finetune` deployment).
        dataset: Dataset name(s) in dataset_info.json; replaces `config.dataset` when set.
        dataset_dir: Folder with dataset_info.json; replaces `config.dataset_dir` when set.
        force: Retrain even when nothing changed.
    """
    config = with_overrides(config, dataset, dataset_dir)
    models = resolve_models(config)  # in a distillation run the student, as finetune trains it
    data = prepare_dataset(config, models.model)
    # The data the champion trained on may hold rows its stage added (teacher-answered prompts): their
    # fingerprint, known without building them.
    data_fingerprint = get_workflow(config).data_fingerprint(config, models, data)
    champion = find_champion(config)
    current = {
        "data_fingerprint": data_fingerprint,
        "base_model_fingerprint": models.model.fingerprint,
        "config_fingerprint": config.fingerprint(),
    }
    if champion is None:
        print(f"{config.registry.name} has no champion yet: training")
    elif force:
        print("force=true: training")
    else:
        changed = changed_fingerprints(current, champion.tags)
        if not changed:
            message = (
                f"Skipped: data, base model and config fingerprints match champion "
                f"{champion.name} v{champion.version}; nothing to retrain"
            )
            print(message)
            return Completed(message=message)
        print(f"changed since champion v{champion.version}: {', '.join(changed)}: training")
    if from_deployment():
        return _run_finetune_deployment(config)
    return finetune(config)


def _run_finetune_deployment(config: RunConfig):
    from prefect.deployments import run_deployment

    name = os.environ.get("PEFTFLOW_FINETUNE_DEPLOYMENT", "finetune/finetune")
    run = run_deployment(name, parameters={"config": config.model_dump(mode="json")}, as_subflow=True)
    print(f"{name}: flow run {run.id} ended {run.state.name}")
    if not run.state.is_completed():
        raise RuntimeError(f"training run {run.id} of {name} ended {run.state.name}: {run.state.message}")
    return Completed(message=f"retrained by {name} flow run {run.id}")
