"""Model references resolve to local safetensors dirs, or fail with one clear line."""

import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from peftflow.errors import UserError
from peftflow.models.resolve import resolve_model


def test_builtin_tiny_model_is_cached_and_fingerprinted(tiny_model):
    again = resolve_model("builtin:tiny-random")
    assert again.path == tiny_model and len(again.fingerprint) == 16
    assert AutoModelForCausalLM.from_pretrained(tiny_model).config.num_hidden_layers == 2


def test_local_dir_and_fingerprint_follows_content(tiny_model, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.save_pretrained(tmp_path / "a")
    with torch.no_grad():
        model.model.norm.weight.add_(1.0)
    model.save_pretrained(tmp_path / "b")
    a, b = resolve_model(str(tmp_path / "a")), resolve_model(str(tmp_path / "b"))
    assert a.path == str((tmp_path / "a").resolve())
    assert a.fingerprint != b.fingerprint


@pytest.mark.parametrize(
    "ref, message",
    [
        ("builtin:nope", "unknown built-in model 'builtin:nope'"),
        ("/does/not/exist", "directory not found"),
    ],
)
def test_bad_references(ref, message):
    with pytest.raises(UserError, match=message):
        resolve_model(ref)


def test_hub_id_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(UserError, match="offline"):
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_pickle_weights_are_refused(tiny_model, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match="only pickle weights"):
        resolve_model(str(tmp_path))


def test_core_never_imports_prefect():
    """The layering rule: peftflow/ is usable from a notebook with no orchestrator."""
    code = (
        "import pkgutil, importlib, sys, peftflow\n"
        "for m in pkgutil.walk_packages(peftflow.__path__, 'peftflow.'): importlib.import_module(m.name)\n"
        "print('prefect' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
