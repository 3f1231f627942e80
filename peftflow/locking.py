"""Where the lock the whole team shares plugs in (pure Python: nothing to import).

Alias moves on a registered model hold one lock (`mlflow_io/aliases.py`). The core cannot import
Prefect, so an entry point installs a factory here (`flows/team_lock.py`: a strict Prefect global
concurrency limit per registered model when a Prefect server is configured); when none is
installed, or it answers None, the core takes its file lock, which covers one machine only."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

LOCK_TIMEOUT_S = 300  # how long a move waits for the lock before it fails

# registered model -> a context manager held around the move, or None.
TeamLock = Callable[[str], "AbstractContextManager | None"]
_installed: list[TeamLock] = []


def use_team_lock(factory: TeamLock | None) -> None:
    """Install (or, with None, remove) the lock shared by every machine of the team."""
    _installed[:] = [factory] if factory else []


def team_lock(model: str) -> AbstractContextManager | None:
    return _installed[0](model) if _installed else None
