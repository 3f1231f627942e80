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
