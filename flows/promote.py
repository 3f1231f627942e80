"""Move or roll back aliases by hand, from the dashboard (deployment `promote`) or Python."""

from __future__ import annotations

from typing import Literal

from prefect import flow

from tasks.find_alias_versions import find_alias_versions
from tasks.make_champion import make_champion
from tasks.roll_back_champion import roll_back_champion
from tasks.start_tracking_run import flow_run_id


@flow(name="promote", log_prints=True)
def promote(
    name: str,
    reason: str,
    action: Literal["promote", "rollback"] = "promote",
    version: str | None = None,
    actor: str | None = None,
) -> dict[str, str | None]:
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
        make_champion(name, version, reason, who)
    else:
        roll_back_champion(name, reason, who)
    out = find_alias_versions(name)
    print(f"{name}: " + ", ".join(f"{k} -> v{v}" for k, v in out.items() if v))
    return out
