"""Copy a registered version to a serving directory (deployment `export-champion`, an example of
what the `peftflow.model.alias-set` event can start next).

    <target>/<name>/v<version>/   the version as a plain transformers dir
    <target>/<name>/current       symlink to it, replaced atomically: a file-watching server
                                  (or a reload hook) sees the old or the new model, never half
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from prefect import flow

from tasks.download_version import download_version
from tasks.find_version_number import find_version_number


@flow(name="export-model", log_prints=True)
def export_model(name: str, version: str, target: str) -> str:
    """Export `name` v`version` (a number or an alias) into `target`; returns the exported dir.

    Args:
        name: Registered model name in MLflow.
        version: A version number, or an alias (`champion`).
        target: Directory the serving side reads (shared volume, mounted bucket).
    """
    version = find_version_number(name, version)
    source = Path(download_version(f"models:/{name}/{version}"))
    root = Path(target).expanduser() / name
    out = root / f"v{version}"
    if not out.is_dir():
        staging = root / f".v{version}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging)
        os.replace(staging, out)
    link = root / ".current.new"
    link.unlink(missing_ok=True)
    link.symlink_to(out.name)
    os.replace(link, root / "current")
    print(f"{name} v{version} -> {out} (current)")
    return str(out)
