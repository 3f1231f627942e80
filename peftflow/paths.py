"""Where peftflow keeps its state: caches, runs, the default MLflow store."""

import os
from pathlib import Path


def peftflow_home() -> Path:
    """`PEFTFLOW_HOME`, else ~/.peftflow. Created on first use."""
    home = Path(os.environ.get("PEFTFLOW_HOME") or Path.home() / ".peftflow").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def cache_dir(kind: str) -> Path:
    d = peftflow_home() / "cache" / kind
    d.mkdir(parents=True, exist_ok=True)
    return d
