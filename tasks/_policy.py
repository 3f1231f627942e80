"""Shared task policies: which failures are worth a retry, and cache keys built from content."""

from __future__ import annotations

from peftflow.errors import UserError


def retry_unless_user_error(task, task_run, state) -> bool:
    """A bad config or dataset fails the same way every time: do not retry it."""
    try:
        state.result()
    except UserError:
        return False
    except Exception:
        return True
    return True


GPU_LIMIT_ENV = "PEFTFLOW_GPU_CONCURRENCY"


def from_deployment() -> bool:
    """The flow run this code runs in was started from a deployment (a worker on a pool)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return bool(ctx and ctx.flow_run and ctx.flow_run.deployment_id)


def gpu_slot(occupy: int = 1):
    """A slot of the strict global concurrency limit that guards the accelerator.

    Runs from a deployment (a worker on a shared pool) take one slot of the limit named by
    `PEFTFLOW_GPU_CONCURRENCY` (default `gpu`), with `strict=True`: a missing limit is an error,
    not a silent free-for-all. Create it once per Prefect server:
    `prefect gcl create gpu --limit <GPUs per pool>`. Runs started by hand (`peftflow run`, Python,
    the temporary local server) take no slot, unless the variable is set explicitly; the value
    `off` disables it everywhere.
    """
    import contextlib
    import os

    from prefect.concurrency.sync import concurrency

    name = os.environ.get(GPU_LIMIT_ENV)
    if name == "off" or (name is None and not from_deployment()):
        return contextlib.nullcontext()
    return concurrency(name or "gpu", occupy=occupy, strict=True)


def result_storage(config):
    """Where the step cache (Prefect's task results) lives: beside the run store's outputs
    (`<storage>/prefect-results`, Prefect's fsspec `RemoteFileSystem`), so any machine with the
    store finds it; None without a store (Prefect's local result storage, as before). Prefect
    wants result storage saved as a block: `peftflow-store-<hash of the URL>`, saved again each time."""
    import hashlib

    from prefect.filesystems import RemoteFileSystem

    from peftflow.store import open_store

    store = open_store(config.storage)
    if store is None:
        return None
    block = RemoteFileSystem(basepath=f"{store.url}/prefect-results")
    block.save(f"peftflow-store-{hashlib.sha256(store.url.encode()).hexdigest()[:12]}", overwrite=True)
    return block
