"""Checks of what a run touches outside the model, made before it trains: each would otherwise fail
after training (registration), when training starts (the optimizer and schedule) or inside the
flow (the run store). Each raises a one-line UserError naming the key or URL.

`check_registered_model_name`: MLflow's own rule for registered-model names, then the registry
server's answer when one is configured and reachable. `build_optimizer_and_schedule`: the optimizer
and the learning-rate schedule built once, as the Trainer builds them, on a one-number parameter.
`probe_run_store`: the run store listed, written, read and cleaned once, unless skipped with
`--offline-store` / `PEFTFLOW_OFFLINE_STORE=1` (a machine that deliberately lacks the store's
credentials, e.g. a laptop validating a worker's config).
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid

from peftflow.errors import UserError
from peftflow.store import storage_url

OFFLINE_STORE_ENV = "PEFTFLOW_OFFLINE_STORE"
PROBE_DIR = "_peftflow_probe"  # under the store URL; the probe object is removed at once
SERVER_TIMEOUT_S = 5


def check_registered_model_name(name: str, key: str = "registry.name") -> None:
    """MLflow's rule for registered-model names (the check its registry stores make), then the
    registry server's answer: a server may have rules of its own (e.g. Unity Catalog's)."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_name

    try:
        _validate_model_name(name)
    except MlflowException as e:
        raise UserError(f"{key}: {name!r}: MLflow refuses this registered-model name: {e.message}") from None
    _ask_registry_server(name, key)


def _ask_registry_server(name: str, key: str) -> None:
    """GET registered-models/get validates the name before looking it up: a refused name is 400
    INVALID_PARAMETER_VALUE, an unknown one 404. An unreachable server is not asked (it is named
    when the run first logs to it)."""
    import requests
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    from peftflow.mlflow_io.tracking import configure_mlflow

    uri = os.environ.get("MLFLOW_REGISTRY_URI") or configure_mlflow()
    if not uri.startswith(("http://", "https://")):
        return
    try:
        response = http_request(
            get_default_host_creds(uri),
            "/api/2.0/mlflow/registered-models/get",
            "GET",
            max_retries=0,
            timeout=SERVER_TIMEOUT_S,
            raise_on_status=False,
            params={"name": name},
        )
    except (MlflowException, requests.exceptions.RequestException, OSError):  # MLflow wraps a refused connection
        return
    if response.status_code == 400:
        try:
            answer = response.json()
        except ValueError:
            return
        if answer.get("error_code") == "INVALID_PARAMETER_VALUE":
            raise UserError(
                f"{key}: {name!r}: the MLflow registry at {uri} refuses this registered-model name: "
                f"{answer.get('message', '')}"
            )


def build_optimizer_and_schedule(cfg) -> None:
    """The optimizer and schedule the Trainer would make, made once on a one-number parameter, so a
    package they need or an argument they miss (min_lr, num_decay_steps in lr_scheduler_kwargs; an eval
    strategy) is named now. Precision flags are left out: this machine may not be the GPU one."""
    import torch
    from transformers import Trainer, TrainingArguments, get_scheduler

    steps = cfg.max_steps if cfg.max_steps > 0 else 100
    with tempfile.TemporaryDirectory() as out:
        try:
            args = TrainingArguments(
                output_dir=out,
                lr_scheduler_type=cfg.lr_scheduler_type,
                lr_scheduler_kwargs=dict(cfg.lr_scheduler_kwargs),
                optim=cfg.optim,
                learning_rate=cfg.learning_rate,
                weight_decay=cfg.weight_decay,
                warmup_steps=cfg.warmup_steps or cfg.warmup_ratio,
                use_cpu=True,
                report_to=[],
            )
        except (ValueError, TypeError, ImportError) as e:
            raise UserError(_refusal(cfg, e)) from None
    dummy = torch.nn.Linear(1, 1, bias=False)
    try:
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, dummy)
        optimizer = optimizer_cls(dummy.parameters(), **optimizer_kwargs)
    except (ValueError, TypeError, ImportError, RuntimeError) as e:
        raise UserError(f"optim: {cfg.optim} cannot be built here: {_first_line(e)}") from None
    try:
        get_scheduler(
            cfg.lr_scheduler_type,
            optimizer,
            num_warmup_steps=args.get_warmup_steps(steps),
            num_training_steps=steps,
            scheduler_specific_kwargs=args.lr_scheduler_kwargs,
        )
    except (ValueError, TypeError) as e:
        raise UserError(_schedule_refusal(cfg, _first_line(e))) from None


def _refusal(cfg, e: Exception) -> str:
    """TrainingArguments refuses a schedule or optimizer by name in its message."""
    text = _first_line(e)
    if "scheduler" in text or cfg.lr_scheduler_type in text:
        return _schedule_refusal(cfg, text)
    return f"optim: {cfg.optim} cannot be built here: {text}"


def _schedule_refusal(cfg, why: str) -> str:
    kwargs = cfg.lr_scheduler_kwargs
    given = f"lr_scheduler_kwargs {dict(kwargs)}" if kwargs else "no lr_scheduler_kwargs"
    return (
        f"lr_scheduler_type: {cfg.lr_scheduler_type} cannot be built with {given}: {why}; "
        "give its arguments in lr_scheduler_kwargs (a schedule that needs an eval strategy cannot run)"
    )


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def offline_store_requested(flag: bool = False) -> bool:
    return flag or os.environ.get(OFFLINE_STORE_ENV, "").strip().lower() in ("1", "true", "yes")


def probe_run_store(configured: str | None, offline: bool = False) -> None:
    """The run store (`storage`, else PEFTFLOW_STORAGE) opened, listed, and a small probe object
    written, read back and removed, as a run will; one line naming the URL and what failed."""
    found = storage_url(configured)
    if found is None or offline_store_requested(offline):
        return
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    from peftflow.store import check_url

    url, source = found
    check_url(url, source)
    step = "open"
    try:
        fs, root = fsspec.core.url_to_fs(url.rstrip("/"), **_quick_failure(url))
        step = "list"
        try:
            fs.ls(root, detail=False)
        except FileNotFoundError:
            pass  # a prefix nothing was written under yet; a missing bucket shows at the write
        probe = f"{root.rstrip('/')}/{PROBE_DIR}/{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        step = "write"
        if isinstance(fs, LocalFileSystem):  # a mounted store needs the folders; on S3 makedirs would create a bucket
            fs.makedirs(probe.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(probe, b"peftflow run store probe\n")
        step = "read"
        fs.cat_file(probe)
        step = "remove"
        fs.rm_file(probe)
    except Exception as e:  # noqa: BLE001 - any failure of the store is named; the class says what to fix
        raise UserError(
            f"{source}: {url}: {step} failed: {_store_failure(e)} (pass --offline-store or set "
            f"{OFFLINE_STORE_ENV}=1 to skip this check on a machine without the store's credentials)"
        ) from None


def _quick_failure(url: str) -> dict:
    """A new filesystem, not fsspec's cached one, so the credentials and endpoint are today's; on S3
    one attempt (botocore retries a refused connection with back-off)."""
    if url.startswith(("s3://", "s3a://")):
        return {
            "skip_instance_cache": True,
            "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 5, "read_timeout": 10},
        }
    return {"skip_instance_cache": True}


def _store_failure(e: BaseException) -> str:
    """What failed, in the user's terms: credentials, bucket, endpoint, permission."""
    name, text = type(e).__name__, _first_line(e)
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
        return f"no credentials found ({text}); set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
    if any(
        code in text
        for code in (
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "ExpiredToken",
            "Access Key Id you provided",
            "signature we calculated",
        )
    ):
        return f"credentials refused ({text})"
    if "NoSuchBucket" in text or "bucket does not exist" in text:
        return f"bucket not found ({text})"
    if (
        name
        in (
            "EndpointConnectionError",
            "ConnectTimeoutError",
            "ClientConnectorError",
            "ConnectionRefusedError",
            "ConnectionError",
            "ReadTimeoutError",
            "gaierror",
        )
        or "Could not connect" in text
    ):
        return f"endpoint unreachable ({text})"
    if isinstance(e, PermissionError) or "AccessDenied" in text or "Forbidden" in text:
        return f"permission denied ({text})"
    return f"{name}: {text}"
