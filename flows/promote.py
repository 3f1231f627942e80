"""Move or roll back aliases by hand, from the dashboard (deployment `promote`) or Python."""

from __future__ import annotations

from typing import Literal

from prefect import flow

from peftflow.mlflow_io.aliases import CHALLENGER, CHAMPION, PREVIOUS, move_champion, rollback
from peftflow.mlflow_io.versions import get_version_by_alias
from tasks.start_tracking_run import flow_run_id


@flow(name="promote", log_prints=True)
def promote(name: str, reason: str, action: Literal["promote", "rollback"] = "promote",
            version: str | None = None, actor: str | None = None) -> dict[str, str | None]:
    """Move `champion` by hand (no gate) or roll back to `previous`; every move is recorded on the version.

    Args:
        name: Registered model name in MLflow.
        reason: Why; recorded on the version together with who moved it.
        action: `promote` makes `version` the champion (the old one becomes `previous`);
            `rollback` swaps `champion` and `previous`.
        version: The version to promote (action `promote` only).
        actor: Who asks; defaults to this flow run.
    """
    who = actor or f"prefect flow run {flow_run_id()}"
    if action == "promote":
        if not version:
            raise ValueError("action `promote` needs a version")
        move_champion(name, version, reason, who)
    else:
        rollback(name, reason, who)
    out = {alias: (ref.version if (ref := get_version_by_alias(name, alias)) else None)
           for alias in (CHAMPION, PREVIOUS, CHALLENGER)}
    print(f"{name}: " + ", ".join(f"{k} -> v{v}" for k, v in out.items() if v))
    return out
