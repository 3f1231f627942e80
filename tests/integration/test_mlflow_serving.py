"""A registered chat version served by MLflow's own scoring server, asked over HTTP the way a
deployment team (or any OpenAI-style client) asks it."""

from __future__ import annotations

import os

import httpx
import pytest

from peftflow.builtin.probes import PROBE_TEXTS
from peftflow.config import RunConfig
from peftflow.mlflow_io.aliases import move_champion
from peftflow.mlflow_io.publishing import publish_model
from peftflow.mlflow_io.tracking import start_run
from tests.integration.stack import BIN, Proc, base_env, free_port, wait_http
from tests.unit.test_serving import _greedy_chat_reply

pytestmark = pytest.mark.integration


def test_mlflow_models_serve_answers_openai_style_chat_requests(tiny_finetune, tmp_path, monkeypatch):
    _, merged = tiny_finetune
    db = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", db)
    monkeypatch.setenv("PEFTFLOW_HOME", str(tmp_path / "home"))
    run_id = start_run(RunConfig(registry={"name": "tiny-chat", "experiment": "serve"}), {})
    ref = publish_model(run_id, "tiny-chat", merged, {"base_model": "builtin:tiny-random"}, {})
    move_champion(ref.name, ref.version, reason="serving test", actor="test")

    port = free_port()
    # MLflow starts uvicorn by name: the venv's bin dir must be on PATH.
    env = {**base_env(tmp_path), "MLFLOW_TRACKING_URI": db, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    server = Proc("mlflow-serve", [str(BIN / "mlflow"), "models", "serve", "-m", "models:/tiny-chat@champion",
                                   "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port)], env, tmp_path)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", server, timeout=240)
        messages = [{"role": "user", "content": PROBE_TEXTS[1]}]
        reply = httpx.post(f"http://127.0.0.1:{port}/invocations", json={"messages": messages, "max_tokens": 7},
                           timeout=120)
        assert reply.status_code == 200, reply.text
        (completion,) = reply.json()
        assert completion["object"] == "chat.completion"
        (choice,) = completion["choices"]
        assert choice["message"]["role"] == "assistant"
        assert choice["finish_reason"] == "length"
        assert completion["usage"]["completion_tokens"] == 7  # max_tokens honoured
        # the chat template was applied: the answer is the greedy reply to the templated messages,
        # not the continuation of the stringified message list
        assert choice["message"]["content"] == _greedy_chat_reply(merged, messages, 7)
        assert choice["message"]["content"].strip()

        # without max_tokens, the logged default budget (not transformers' 20 tokens, prompt included)
        longer = httpx.post(f"http://127.0.0.1:{port}/invocations", json={"messages": messages}, timeout=300)
        assert longer.json()[0]["usage"]["completion_tokens"] > 20
    finally:
        server.stop()
