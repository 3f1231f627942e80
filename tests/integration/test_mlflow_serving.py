"""A registered chat version served by MLflow's own scoring server, asked over HTTP the way a
deployment team (or any OpenAI-style client) asks it: a text chat model and a vision-language one."""

from __future__ import annotations

import base64
import contextlib
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


@contextlib.contextmanager
def _served(model_uri: str, db: str, tmp_path):
    """`mlflow models serve` on `model_uri`; yields its /invocations URL."""
    port = free_port()
    # MLflow starts uvicorn by name: the venv's bin dir must be on PATH.
    env = {
        **base_env(tmp_path),
        "MLFLOW_TRACKING_URI": db,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
    }
    server = Proc(
        "mlflow-serve",
        [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            model_uri,
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env,
        tmp_path,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", server, timeout=240)
        yield f"http://127.0.0.1:{port}/invocations"
    finally:
        server.stop()


def test_mlflow_models_serve_answers_openai_style_chat_requests(tiny_finetune, tmp_path, monkeypatch):
    _, merged = tiny_finetune
    db = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", db)
    monkeypatch.setenv("PEFTFLOW_HOME", str(tmp_path / "home"))
    run_id = start_run(RunConfig(registry={"name": "tiny-chat", "experiment": "serve"}), {})
    ref = publish_model(run_id, "tiny-chat", merged, {"base_model": "builtin:tiny-random"}, {})
    move_champion(ref.name, ref.version, reason="serving test", actor="test")

    with _served("models:/tiny-chat@champion", db, tmp_path) as url:
        messages = [{"role": "user", "content": PROBE_TEXTS[1]}]
        reply = httpx.post(url, json={"messages": messages, "max_tokens": 7}, timeout=120)
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
        longer = httpx.post(url, json={"messages": messages}, timeout=300)
        assert longer.json()[0]["usage"]["completion_tokens"] > 20


def test_mlflow_models_serve_answers_chat_requests_with_images(peftflow_home, tmp_path, monkeypatch):
    from transformers import AutoProcessor

    from peftflow.builtin.shapes import write_shapes_dataset
    from peftflow.inference import generate_image_reply
    from peftflow.models.resolve import resolve_model

    llava = resolve_model("builtin:tiny-llava").path
    db = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", db)
    monkeypatch.setenv("PEFTFLOW_HOME", str(tmp_path / "home"))
    run_id = start_run(RunConfig(registry={"name": "tiny-vlm", "experiment": "serve"}), {})
    ref = publish_model(run_id, "tiny-vlm", llava, {"base_model": "builtin:tiny-llava"}, {})
    write_shapes_dataset(tmp_path / "shapes", n=2)
    image = tmp_path / "shapes" / "demo_shapes" / "0001.png"
    url_of = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    question = "What is in the picture?"
    messages = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": url_of}}, {"type": "text", "text": question}],
        }
    ]

    with _served(ref.uri, db, tmp_path) as url:
        reply = httpx.post(url, json={"messages": messages, "max_tokens": 5, "temperature": 0.0}, timeout=120)
        assert reply.status_code == 200, reply.text
        completion = reply.json()
        assert completion["object"] == "chat.completion"
        (choice,) = completion["choices"]
        assert choice["message"]["role"] == "assistant"
        # the answer `peftflow generate --image` gives, and the prompt holds the image's 16 tokens
        assert choice["message"]["content"] == generate_image_reply(llava, question, str(image), max_new_tokens=5)
        processor = AutoProcessor.from_pretrained(llava)
        text = processor.tokenizer.apply_chat_template(
            [{"role": "user", "content": f"<image>{question}"}], tokenize=False, add_generation_prompt=True
        )
        assert completion["usage"]["prompt_tokens"] == len(
            processor(text=[text], images=[_open(image)])["input_ids"][0]
        )
        assert completion["usage"]["completion_tokens"] <= 5

        remote = httpx.post(
            url,
            json={
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}],
                    }
                ]
            },
            timeout=60,
        )
        assert remote.status_code >= 400 and "no network download" in remote.text


def _open(path):
    from PIL import Image

    return Image.open(path).convert("RGB")
