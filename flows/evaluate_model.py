"""Score any registered version on any dataset (deployment `evaluate-model`)."""

from __future__ import annotations

import json

from prefect import flow
from prefect.artifacts import create_table_artifact

from peftflow.config import RunConfig
from tasks.download_version import download_version
from tasks.find_version_number import find_version_number
from tasks.score_version import score_version
from tasks.tag_version import tag_version


@flow(name="evaluate-model", log_prints=True)
def evaluate_model(name: str, version: str = "champion", config: RunConfig = RunConfig()) -> dict:
    """Score one registered version on the held-out split of a dataset; the scores are recorded on
    the version as the tag `eval.<dataset>` and shown as a table artifact.

    Args:
        name: Registered model name in MLflow.
        version: A version number, or an alias (`champion`, `challenger`, `previous`).
        config: Supplies the dataset (`dataset`, `dataset_dir`, `val_size`, `cutoff_len`, `template`)
            and the `evaluation` section; the training fields are ignored.
    """
    number = find_version_number(name, version)
    model_dir = download_version(f"models:/{name}/{number}")
    result = score_version(f"{name} v{number}", model_dir, config)
    result = {"name": name, "version": number, "dataset": config.dataset, "metric": config.evaluation.metric, **result}
    tag_version(name, number, f"eval.{config.dataset}"[:250], json.dumps(result))
    create_table_artifact(key="evaluate-model", table=[result], description=f"{name} v{number} on {config.dataset}")
    print(json.dumps(result))
    return result
