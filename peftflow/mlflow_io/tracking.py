"""MLflow tracking: where MLflow points, the experiment, runs and what they log.

Every call names its run by `run_id` and goes through `MlflowClient`: MLflow's fluent "active
run" is per thread, and Prefect runs tasks in other threads.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from peftflow.config.form import FLAT
from peftflow.paths import peftflow_home
from peftflow.redact import MASK, SECRET_KEY

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from peftflow.config import RunConfig

_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
_CONFIGURE_LOCK = threading.Lock()  # tasks in threads configure at once; os.environ is shared
TRAIN_KEY_TAG = "train_key"  # one name on runs and versions (the lineage key)
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests a run under the run it names
# Which UI the experiment opens in: MLflow's training view, not the GenAI one (traces, token usage)
# it would otherwise guess for a chat model.
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
NOTE_TAG = "mlflow.note.content"  # the run's description in MLflow's UI
PREFECT_URL_TAG = "peftflow.prefect_flow_run_url"


def configure_mlflow() -> str:
    """Point MLflow at `MLFLOW_TRACKING_URI` (and `MLFLOW_REGISTRY_URI`), else at
    `sqlite:///<home>/mlflow.db`. Idempotent.

    MLflow's setters also copy the URIs into `os.environ`; they are put back as the user left them,
    or the next call (a worker serving several flows, another PEFTFLOW_HOME) would read this call's
    choice as if the user had made it."""
    import mlflow

    with _CONFIGURE_LOCK:
        user = {key: os.environ.get(key) for key in _URI_VARIABLES}
        uri = user["MLFLOW_TRACKING_URI"] or f"sqlite:///{peftflow_home().resolve()}/mlflow.db"
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(user["MLFLOW_REGISTRY_URI"] or uri)
        for key, value in user.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return uri


def mlflow_client() -> MlflowClient:
    from mlflow import MlflowClient

    uri = configure_mlflow()
    return MlflowClient(tracking_uri=uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or uri)


def ensure_experiment(name: str) -> str:
    """Get or create the experiment; returns its id.

    With a local sqlite store there is no server to hold artifacts, and MLflow's default would be
    `./mlruns` in whatever directory the process started in: the artifacts go to
    `<home>/mlartifacts` instead. A tracking server decides for itself.
    """
    client = mlflow_client()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        # A kind someone chose stays; an unset or merely inferred one becomes the training view.
        kind = exp.tags.get(EXPERIMENT_KIND_TAG, "")
        if kind in ("", "no_inferred_type") or kind.endswith("_inferred"):
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
        return exp.experiment_id
    location = None
    if urlparse(configure_mlflow()).scheme == "sqlite":
        location = (peftflow_home().resolve() / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
    except Exception:  # created meanwhile by a concurrent run
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def config_params(cfg: RunConfig | dict[str, Any]) -> dict[str, str]:
    """The config as flat MLflow params: dotted keys, lists joined by ',', secrets masked."""
    raw = cfg if isinstance(cfg, dict) else cfg.model_dump(mode="json", context=FLAT)
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif SECRET_KEY.search(prefix) and value not in (None, ""):
            out[prefix] = MASK
        elif isinstance(value, (list, tuple)):
            out[prefix] = ",".join(str(v) for v in value)
        else:
            out[prefix] = str(value)

    walk("", raw)
    return out


def start_run(cfg: RunConfig, tags: dict[str, str], train_key: str | None = None) -> str:
    """Create a run in `cfg.registry.experiment`, log the whole config as params; returns run_id.

    With `train_key`, an existing run of the same training key and registered model is reused, so
    a rerun or retry logs into the run that already holds the training's metrics and model, and the
    run is named `<registered model>-<train key>`."""
    from mlflow.entities import Param

    client = mlflow_client()
    experiment_id = ensure_experiment(cfg.registry.experiment)
    if train_key:
        found = client.search_runs(
            [experiment_id],
            max_results=1,
            order_by=["attributes.start_time ASC"],
            filter_string=f"tags.`{TRAIN_KEY_TAG}` = '{train_key}' and "
            f"tags.`peftflow.registered_model` = '{cfg.registry.name}'",
        )
        if found:
            return found[0].info.run_id
        tags = {**tags, TRAIN_KEY_TAG: train_key, "peftflow.registered_model": cfg.registry.name}
    run = client.create_run(
        experiment_id,
        tags={k: str(v) for k, v in tags.items()},
        run_name=f"{cfg.registry.name}-{train_key}" if train_key else None,
    )
    params = [Param(k, v) for k, v in config_params(cfg).items()]
    client.log_batch(run.info.run_id, params=params)
    return run.info.run_id


def run_url(run_id: str) -> str | None:
    """The run's page in MLflow's UI, when MLflow is a server (http/https); a sqlite store has none."""
    uri = configure_mlflow()
    if urlparse(uri).scheme not in ("http", "https"):
        return None
    experiment_id = mlflow_client().get_run(run_id).info.experiment_id
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def log_metrics(run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
    if batch:
        mlflow_client().log_batch(run_id, metrics=batch)


def set_run_tags(run_id: str, tags: dict[str, str]) -> None:
    client = mlflow_client()
    for k, v in tags.items():
        client.set_tag(run_id, k, str(v))


def log_artifact(run_id: str, local_path: str, artifact_path: str | None = None) -> None:
    """Upload a file, or a directory (it keeps its name), under `artifact_path`."""
    mlflow_client().log_artifact(run_id, str(local_path), artifact_path)


def finish_run(run_id: str, status: str = "FINISHED") -> None:
    """status: FINISHED, FAILED or KILLED."""
    mlflow_client().set_terminated(run_id, status)
