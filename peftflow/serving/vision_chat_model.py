"""The MLflow model (models-from-code) that serves a vision-language version as a chat model.

MLflow 3.17's transformers flavor has no chat task for image-text-to-text pipelines and its pyfunc
has no image-text-to-text branch, so a vision-language version is logged as this pyfunc instead
(peftflow/mlflow_io/publishing.py). MLflow copies this file into the version: it imports only
torch, transformers, pillow and mlflow, so the version serves wherever those are installed.

`mlflow models serve` hands it the OpenAI-style body `{"messages": [...], "max_tokens": N}`;
a message's content is a string or a list of parts, `{"type": "text", "text": ...}` and
`{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}` (a local file path
also works; there is no network download). Each image becomes the model's image token at its
place in the text, then the tokenizer's chat template applies. Decoding is greedy, like
peftflow's evaluation; `temperature` and the other sampling params are accepted and ignored.
"""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import AnyType, Array, ColSpec, DataType, Object, Property, Schema

DEFAULT_MAX_NEW_TOKENS = 256
MODEL_ARTIFACT = "model"  # the artifacts key of the merged model dir

SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec(Array(Object([Property("role", DataType.string), Property("content", AnyType())])), "messages"),
            ColSpec(DataType.long, "max_tokens", required=False),
            ColSpec(DataType.double, "temperature", required=False),
            ColSpec(DataType.double, "top_p", required=False),
            ColSpec(DataType.long, "top_k", required=False),
            ColSpec(Array(DataType.string), "stop", required=False),
        ]
    ),
    outputs=Schema([ColSpec(AnyType(), "choices"), ColSpec(AnyType(), "usage"), ColSpec(DataType.string, "object")]),
)


def image_from_url(url: str):
    """An image part's `url`: a base64 data URL, `file://PATH` or a plain local path."""
    from PIL import Image

    if url.startswith("data:"):
        _, _, payload = url.partition(",")
        return Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB")
    path = Path(url.removeprefix("file://"))
    if not path.is_file():
        raise ValueError(f"image_url {url[:80]}: not a data URL or a local file (no network download)")
    return Image.open(path).convert("RGB")


def chat_text_and_images(messages: list[dict], image_token: str) -> tuple[list[dict], list]:
    """OpenAI messages -> messages with string content (each image part replaced by `image_token`)
    and the images in order."""
    plain, images = [], []
    for m in messages:
        content = m.get("content") or ""
        if isinstance(content, str):
            plain.append({"role": m["role"], "content": content})
            continue
        text = ""
        for part in content:
            if part.get("type") == "image_url":
                images.append(image_from_url(part["image_url"]["url"]))
                text += image_token
            elif part.get("type") == "text":
                text += part["text"]
        plain.append({"role": m["role"], "content": text})
    return plain, images


def image_token_of(tokenizer) -> str:
    return getattr(tokenizer, "image_token", None) or "<image>"


def greedy_reply(model, processor, messages: list[dict], max_new_tokens: int) -> tuple[str, int, int]:
    """(reply, prompt tokens, new tokens) of a greedy answer to OpenAI-style messages."""
    import torch

    plain, images = chat_text_and_images(messages, image_token_of(processor.tokenizer))
    text = processor.tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=True)
    batch = processor(text=[text], images=images or None, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, batch["input_ids"].shape[1] :]
    return processor.tokenizer.decode(new, skip_special_tokens=True), batch["input_ids"].shape[1], len(new)


class VisionChatModel(PythonModel):
    def load_context(self, context):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        model_dir = context.artifacts[MODEL_ARTIFACT]
        # peftflow publishes only model types transformers ships (models/vision.py PARTS): no remote code.
        self.processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=False)
        self.model = AutoModelForImageTextToText.from_pretrained(
            model_dir, dtype=torch.float32, trust_remote_code=False
        ).eval()
        self.name = Path(model_dir).name

    def predict(self, context, model_input, params=None) -> dict[str, Any]:
        request = _as_request(model_input)
        budget = int(request.get("max_tokens") or DEFAULT_MAX_NEW_TOKENS)
        reply, prompt_tokens, new_tokens = greedy_reply(self.model, self.processor, request["messages"], budget)
        return {
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "finish_reason": "length" if new_tokens >= budget else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": new_tokens,
                "total_tokens": prompt_tokens + new_tokens,
            },
        }


def _as_request(model_input) -> dict[str, Any]:
    """The scoring server passes the body as a dict; `pyfunc.predict` on a DataFrame of one row works too."""
    if isinstance(model_input, dict):
        return model_input
    row = model_input.to_dict(orient="records")[0]
    return {k: (list(v) if hasattr(v, "tolist") and not isinstance(v, str) else v) for k, v in row.items()}


mlflow.models.set_model(VisionChatModel())
