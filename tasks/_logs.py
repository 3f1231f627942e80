"""The core's log lines (the `peftflow` logger: steps, rows scored, training steps) in the run's
Prefect logs. The core never imports Prefect, so the tasks layer attaches Prefect's API handler."""

from __future__ import annotations

import logging

from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler


def _in_a_run(record: logging.LogRecord) -> bool:
    # Outside a run (the CLI's precheck before the flow) there is no run to log to.
    return bool(TaskRunContext.get() or FlowRunContext.get())


def send_core_logs_to_runs() -> None:
    core = logging.getLogger("peftflow")
    if any(isinstance(h, APILogHandler) for h in core.handlers):
        return
    handler = APILogHandler()
    handler.addFilter(_in_a_run)
    core.addHandler(handler)
    if core.level == logging.NOTSET:
        core.setLevel(logging.INFO)


send_core_logs_to_runs()
