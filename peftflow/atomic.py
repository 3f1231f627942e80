"""Build a directory once, however many processes race for it, and never leave half of one."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from filelock import FileLock


def build_once(target: Path, build: Callable[[Path], None], ready: Callable[[Path], bool] | None = None) -> Path:
    """Return `target`, first building it when `ready(target)` is false (default: it exists).

    `build(tmp)` writes the content into a fresh directory beside `target`; under a file lock the
    directory is then renamed into place, so a crash mid-build leaves no partial `target` and a
    concurrent caller waits for the build instead of repeating it."""
    ready = ready or Path.exists
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not ready(target):
            tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
            try:
                build(tmp)
                shutil.rmtree(target, ignore_errors=True)  # an incomplete dir left by an older version or by hand
                os.replace(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return target
