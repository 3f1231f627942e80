"""Content keys for stages: the same key means the stage's output can be reused."""

from __future__ import annotations

import hashlib
import json
import subprocess
from functools import lru_cache
from pathlib import Path

import peftflow
from peftflow.config import RunConfig

# Sections that change publishing or scoring, not the trained weights.
# The teacher is keyed by its content fingerprint, not by how it was named (alias or version).
_NOT_TRAINING = {"registry", "promotion", "evaluation", "merge", "merge_tolerance", "quantized_merge_tolerance",
                 "output_dir", "on_invalid_rows", "teacher", "teacher_adapter"}


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_key(cfg: RunConfig, model_fingerprint: str, data_fingerprint: str, teacher_fingerprint: str = "") -> str:
    training = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _NOT_TRAINING}
    return _digest(training, model_fingerprint, data_fingerprint, teacher_fingerprint)


def stage_dir(cfg: RunConfig, key: str) -> Path:
    """Where one training key's checkpoints, adapter, merged model and report live."""
    return cfg.resolved_output_dir() / key


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    root = Path(peftflow.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{peftflow.__version__}+{sha}" if sha else peftflow.__version__
