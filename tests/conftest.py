"""Shared test fixtures: one PEFTFLOW_HOME per test session, the tiny model, dataset dirs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


@pytest.fixture
def keep_model():
    """A Trainer callback that holds the model the run ended with (`.model`), to compare with a reload."""
    from transformers import TrainerCallback

    class KeepModel(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            self.model = model

    return KeepModel()


@pytest.fixture(scope="session")
def peftflow_home(tmp_path_factory: pytest.TempPathFactory):
    """A PEFTFLOW_HOME for the whole session. Under pytest-xdist the workers share one (its parent
    basetemp), so the tiny model is built once; models.py guards the build with a file lock."""
    base = tmp_path_factory.getbasetemp()
    home = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "peftflow-home"
    home.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PEFTFLOW_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def tiny_model(peftflow_home) -> str:
    """Local dir of builtin:tiny-random (SmolLM2's tokenizer and chat template, random weights)."""
    from peftflow.models.resolve import resolve_model

    return resolve_model("builtin:tiny-random").path


@pytest.fixture
def write_dataset(tmp_path: Path):
    """write_dataset(info, files) -> dataset dir holding dataset_info.json and the data files.

    `files` maps a relative path to rows (json list), str or bytes (written as is)."""

    def write(info: dict, files: dict[str, object]) -> Path:
        root = tmp_path / "datasets"
        root.mkdir(exist_ok=True)
        (root / "dataset_info.json").write_text(json.dumps(info, indent=2))
        for name, content in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            elif isinstance(content, str):
                path.write_text(content)
            else:
                path.write_text(json.dumps(content))
        return root

    return write


@pytest.fixture(scope="session")
def tiny_finetune(tiny_model, tmp_path_factory) -> tuple[str, str]:
    """(adapter dir, merged dir) of a few-step LoRA fine-tune of the tiny model on the demo task:
    weights whose greedy answers are text, not blanks, for the serving and export tests."""
    from peftflow.config import RunConfig
    from peftflow.data import prepare_dataset
    from peftflow.merge import merge
    from peftflow.training.run import run as train

    out = tmp_path_factory.mktemp("tiny-finetune")
    # 16 steps: by then every prompt's greedy answer starts as the task's JSON. After 8 the random
    # model is still between modes, and kernels of another CPU tipped a probe's answer into blanks.
    cfg = RunConfig(
        model_name_or_path=tiny_model,
        max_steps=16,
        learning_rate=1e-2,
        logging_steps=4,
        save_steps=100,
        per_device_train_batch_size=4,
        bf16_autocast=False,
    )
    result = train(cfg, tiny_model, prepare_dataset(cfg, tiny_model).path, out)
    merged = merge(tiny_model, result.adapter_dir, out / "merged", tolerance=1e-4)
    return result.adapter_dir, merged.merged_dir


@pytest.fixture
def mlflow_home(tmp_path, monkeypatch) -> Path:
    """A fresh PEFTFLOW_HOME and sqlite MLflow store per test; cwd is tmp_path (to catch ./mlruns)."""
    from peftflow.mlflow_io.tracking import configure_mlflow

    home = tmp_path / "home"
    monkeypatch.setenv("PEFTFLOW_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    configure_mlflow()
    return home


def shipped_run_configs(path: Path) -> list:
    """The run configs a shipped configs/*.yaml runs: the file's, or a sweep file's every variant
    (each travels to the `sweep-variant` deployment as JSON, as a single run does to `finetune`)."""
    import yaml

    from peftflow.config import load_config
    from peftflow.sweep.plan import read_sweep_file

    if "sweep" in (yaml.safe_load(path.read_text()) or {}):
        return [v.config for v in read_sweep_file(str(path), [])[1].variants]
    return [load_config(path)[0]]
