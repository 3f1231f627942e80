"""The promotion lock the whole team shares: with a Prefect server configured, alias moves on a
registered model (promote, rollback, approval, an outside move's `previous`) hold the one slot of a
strict Prefect global concurrency limit made for that model, so two machines promoting the same
model at once take turns. No server (a laptop, the temporary local server each run starts): the
core's file lock, which covers the processes of one machine.

Installed by `flows/__init__.py`, which every entry point (CLI, worker, deployment) imports first.
`limit_name` and `ensure_limit` also name and size a sweep's limit (flows/sweep.py).
Prefect is imported only when a lock is taken, so the CLI stays quick to start."""

from __future__ import annotations

import hashlib
import re

from peftflow.locking import LOCK_TIMEOUT_S, use_team_lock

# A crashed holder's slot comes back after this long (the lease is renewed while the move runs).
LEASE_S = 60


def server_configured() -> bool:
    """A Prefect server every machine can reach: `PREFECT_API_URL` (environment, profile or an
    active settings context). The temporary local server is per process, so it does not count."""
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


def limit_name(model: str, kind: str = "aliases") -> str:
    """`peftflow-<kind>-<model>`; a name with characters Prefect refuses (or a very long one)
    keeps the safe part and gets a hash of the whole, so two models never share a limit."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", model)[:80]
    if safe != model:
        safe += "-" + hashlib.sha256(model.encode()).hexdigest()[:8]
    return f"peftflow-{kind}-{safe}"


def ensure_limit(name: str, slots: int = 1) -> None:
    """Make the limit hold `slots` slots, creating it unless it exists; two machines creating it at
    once both end with the one limit."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            if client.read_global_concurrency_limit_by_name(name).limit != slots:
                client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=slots))
            return
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
        except ObjectAlreadyExists:
            return


def prefect_alias_lock(model: str):
    """The server-side lock for `model`'s aliases, or None (use the file lock) without a server."""
    if not server_configured():
        return None
    from prefect.concurrency.sync import concurrency

    name = limit_name(model)
    ensure_limit(name)
    return concurrency(name, occupy=1, strict=True, timeout_seconds=LOCK_TIMEOUT_S, lease_duration=LEASE_S)


def install() -> None:
    use_team_lock(prefect_alias_lock)
