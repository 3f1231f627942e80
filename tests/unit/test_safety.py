"""Safety: credentials never in the config (so never in Prefect parameters, MLflow params or logs),
no remote code unless asked, pickle weights refused unless allowed."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from peftflow.config import RunConfig, parse_config
from peftflow.errors import UserError
from peftflow.mlflow_io.tracking import config_params
from peftflow.models.resolve import resolve_model
from peftflow.redact import MASK, is_secret_key, redact

ROOT = Path(__file__).resolve().parents[2]
SECRET = "hf_s3cr3tvalue0123456789"


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"hf_hub_token": SECRET}, "hf_hub_token"),  # LLaMA-Factory's own key
        ({"ms_hub_token": SECRET}, "ms_hub_token"),
        ({"registry": {"name": "x", "api_key": SECRET}}, "registry.api_key"),
        ({"mlflow_password": SECRET}, "mlflow_password"),
        ({"aws_secret_access_key": SECRET}, "aws_secret_access_key"),
    ],
)
def test_credentials_in_the_config_are_refused_without_echoing_them(raw, key):
    with pytest.raises(UserError) as e:
        parse_config(raw, source="run.yaml")
    message = str(e.value)
    assert f"run.yaml: key '{key}' looks like a credential" in message and "environment variables" in message
    assert SECRET not in message and "\n" not in message


def test_no_config_field_can_hold_a_secret():
    """What Prefect shows as the flow run's parameters is the RunConfig: no field of it is a credential."""
    cfg = RunConfig().model_dump(mode="json")
    flat = config_params(cfg)
    assert not [k for k in flat if is_secret_key(k)]
    assert not is_secret_key("evaluation.max_new_tokens") and not is_secret_key("promotion.auto_promote")


def test_config_params_masks_any_secret_like_key():
    params = config_params(
        {
            "lora_rank": 8,
            "hub_token": SECRET,
            "s3": {"secret_access_key": SECRET},
            "db": {"password": SECRET, "user": "ann"},
            "api_key": None,
        }
    )
    assert params["hub_token"] == params["s3.secret_access_key"] == params["db.password"] == MASK
    assert params["db.user"] == "ann" and params["lora_rank"] == "8" and params["api_key"] == "None"
    assert SECRET not in json.dumps(params)


def test_redact_masks_credential_env_values_and_url_passwords(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pa55word!")
    monkeypatch.setenv("SOME_FLAG", "true")
    text = f"token {SECRET} uri https://ann:pa55word!@mlflow.example:5000/ and http://bob:hunter2@h/x flag true"
    assert (
        redact(text) == f"token {MASK} uri https://ann:{MASK}@mlflow.example:5000/ and http://bob:{MASK}@h/x flag true"
    )


def test_trust_remote_code_is_off_by_default_and_passed_to_every_load():
    """Every from_pretrained of a model or tokenizer under peftflow/ passes trust_remote_code
    explicitly; the only exceptions build peftflow's own built-in models from known local files."""
    assert RunConfig().trust_remote_code is False
    exempt = {("models.py", "convert_smollm2"), ("models.py", "build_tiny"), ("models.py", "build_llava")}
    missing = []
    for path in (ROOT / "peftflow").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or (path.name, fn.name) in exempt:
                continue
            for call in ast.walk(fn):
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and call.func.attr == "from_pretrained"
                    and isinstance(call.func.value, ast.Name)
                    and call.func.value.id.startswith("Auto")
                    and "trust_remote_code" not in {k.arg for k in call.keywords}
                ):
                    missing.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert not missing, missing


@pytest.fixture
def pickle_only_model(tiny_model, tmp_path) -> Path:
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    return tmp_path


def test_pickle_weights_need_the_config_switch(pickle_only_model):
    assert RunConfig().allow_pickle_weights is False
    with pytest.raises(UserError, match="only pickle weights .* or set allow_pickle_weights: true"):
        resolve_model(str(pickle_only_model))
    resolved = resolve_model(str(pickle_only_model), allow_pickle_weights=True)
    assert resolved.path == str(pickle_only_model) and resolved.fingerprint
    cfg, _ = parse_config({"allow_pickle_weights": True})
    assert cfg.allow_pickle_weights


def test_no_weights_at_all_is_refused_even_when_pickle_is_allowed(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="has no weights"):
        resolve_model(str(tmp_path), allow_pickle_weights=True)


def test_log_records_are_redacted_whatever_handler_writes_them(monkeypatch, caplog):
    import logging

    import flows  # noqa: F401  (installs the redaction, as every entry point does)

    monkeypatch.setenv("HF_TOKEN", SECRET)
    log = logging.getLogger("peftflow.test")
    with caplog.at_level(logging.INFO, logger="peftflow.test"):
        log.info("pushing with %s to %s", SECRET, "https://ann:pa55word!@mlflow.example/")
        try:
            raise RuntimeError(f"hub refused {SECRET}")
        except RuntimeError:
            log.exception("upload failed")
    assert caplog.records and SECRET not in caplog.text and "pa55word!" not in caplog.text
    assert f"pushing with {MASK} to https://ann:{MASK}@mlflow.example/" in caplog.text
    assert f"RuntimeError: hub refused {MASK}" in caplog.text
