"""What `peftflow` shows on a terminal: Prefect's run lines, the core's step lines, one progress bar
for training; third-party progress bars and warnings only with --verbose."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator

# Read by the libraries when they are imported, and inherited by torchrun's training processes.
_QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",  # transformers' logger: deprecation and load-report warnings
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' tqdm bars ("Loading weights", shard writes)
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",  # datasets' "Saving the dataset" bars
    # Any other tqdm bar (read when tqdm is imported): transformers' "Converting and de-quantizing GGUF
    # tensors", lm-eval's "Building contexts"; lm-eval's request bars follow it too (evaluation/harness.py).
    "TQDM_DISABLE": "1",
}
# Loggers that warn about what a run does not use: bitsandbytes about an optional CPU kernel
# package (k-bit runs, the only ones that import it); lm-eval about its task YAMLs and defaults.
_QUIET_LOGGERS = ("bitsandbytes", "lm_eval")


def hide_bitsandbytes() -> None:
    """peft imports bitsandbytes whenever it is installed (`import peft` -> peft/helpers.py, a plain
    `try: import bitsandbytes`; transformers' Trainer imports peft), with no switch to defer it:
    1.7 s and its CPU-kernel warning on every command. Until a config needs it (`allow_bitsandbytes`),
    peft and transformers see it as not installed (`sys.modules` entry None: the import fails, and
    `importlib.util.find_spec` answers None). Before peft or transformers are imported."""
    sys.modules.setdefault("bitsandbytes", None)


def allow_bitsandbytes() -> None:
    """A k-bit base or an 8-bit optimizer (`RunConfig.needs_bitsandbytes`): importable again."""
    if "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None:
        del sys.modules["bitsandbytes"]


def quiet_libraries(verbose: bool) -> None:
    """Before transformers, datasets or peft are imported. Explicit environment settings win."""
    if verbose:
        return
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # transformers' deprecation notices (about its own internals, called by transformers / peft) go
    # through `warnings`, not its logger.
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(transformers|peft)\.")
    warnings.showwarning = _without_hints(warnings.showwarning)


# mlflow's hint when a PythonModel with an untyped `predict` is defined (serving/vision_chat_model.py,
# imported by every run) is for the model's author. Dropped where it is shown: mlflow raises it
# under its own `simplefilter("once")`, which would override an ignore filter.
_HINTS = ("Add type hints to the `predict` method",)


def _without_hints(show):
    def showwarning(message, category, filename, lineno, file=None, line=None):
        if not any(hint in str(message) for hint in _HINTS):
            show(message, category, filename, lineno, file, line)

    return showwarning


def _prefect_console() -> logging.Handler | None:
    from prefect.logging.handlers import PrefectConsoleHandler

    return next((h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)), None)


class _Bar(logging.Handler):
    """Draws the `progress` (a StepProgress) that peftflow.train's step records carry."""

    def __init__(self, progress):
        super().__init__()
        self.progress, self.task = progress, None
        self.shown = {"loss": "", "eval_loss": ""}

    def emit(self, record: logging.LogRecord) -> None:
        p = getattr(record, "progress", None)
        if p is None:
            return
        # A step's record brings the loss, an evaluation's the eval_loss: the bar shows the latest of each.
        if p.loss is not None:
            self.shown["loss"] = f"loss {p.loss:.4f}"
        if p.eval_loss is not None:
            self.shown["eval_loss"] = f"eval_loss {p.eval_loss:.4f}"
        loss = " ".join(v for v in self.shown.values() if v)
        if self.task is None:
            self.task = self.progress.add_task("training", total=p.total, loss=loss)
        self.progress.update(self.task, completed=p.step, total=p.total, loss=loss)
        if p.step >= p.total:  # leave the finished bar above the lines of the steps that follow
            self.progress.stop()


def _not_a_step(record: logging.LogRecord) -> bool:
    return not hasattr(record, "progress")


@contextmanager
def training_bar(verbose: bool) -> Iterator[None]:
    """One bar (step, loss, ETA) instead of a line per logging step; --verbose keeps the lines.
    Drawn on Prefect's console so its log lines print above the bar."""
    console = _prefect_console()
    if verbose or console is None:
        yield
        return
    from rich.default_styles import DEFAULT_STYLES
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.theme import Theme

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console.console,
    )
    bar, train_log = _Bar(progress), logging.getLogger("peftflow.train")
    console.addFilter(_not_a_step)
    train_log.addHandler(bar)
    console.console.push_theme(Theme(DEFAULT_STYLES))  # Prefect's theme lacks the progress styles
    try:
        with progress:
            yield
    finally:
        console.console.pop_theme()
        train_log.removeHandler(bar)
        console.removeFilter(_not_a_step)
