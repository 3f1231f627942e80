"""One chat reply from a registered version (`models:/NAME@champion`) or a local model dir."""

from __future__ import annotations

from pathlib import Path

from peftflow.errors import UserError
from peftflow.evaluation.scoring import generate, is_prompt_learning
from peftflow.mlflow_io.downloads import download_model_dir, load_pipeline
from peftflow.models import heads, vision


def generate_reply(model: str, prompt: str, max_new_tokens: int = 128, image: str | None = None) -> str:
    """One greedy chat reply from a model URI (`models:/NAME@champion`) or a local model dir;
    with `image` (a file path), a vision-language model answers about that image."""
    if image is not None:
        local = Path(model).expanduser()
        return generate_image_reply(
            str(local) if local.is_dir() else download_model_dir(model), prompt, image, max_new_tokens
        )
    if Path(model).expanduser().is_dir():
        from transformers import pipeline

        _refuse_reward_model(model, heads.is_reward_model(Path(model).expanduser()))
        pipe = pipeline("text-generation", model=str(Path(model).expanduser()))
    else:
        pipe = load_pipeline(model)
        _refuse_reward_model(model, pipe.task == heads.REWARD_TASK)
    chat = bool(pipe.tokenizer.chat_template)
    messages = [{"role": "user", "content": prompt}]
    if is_prompt_learning(pipe.model):  # peft's generate() is wrong for these: evaluation's decoding is not
        ids = (
            pipe.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
            if chat
            else pipe.tokenizer(prompt)["input_ids"]
        )
        eos = pipe.model.generation_config.eos_token_id
        return generate(
            pipe.model, pipe.tokenizer, [list(ids)], max_new_tokens, 1, eos if isinstance(eos, list) else [eos]
        )[0]
    options = dict(max_new_tokens=max_new_tokens, do_sample=False)
    if chat:
        out = pipe(messages, **options)
        return out[0]["generated_text"][-1]["content"]
    out = pipe(prompt, return_full_text=False, **options)
    return out[0]["generated_text"]


def _refuse_reward_model(model: str, reward: bool) -> None:
    if reward:
        raise UserError(
            f"{model} is a reward model (stage: rm): it scores text and does not generate; "
            f"load it as transformers' {heads.REWARD_TASK} pipeline or mlflow.pyfunc"
        )


def generate_image_reply(model_dir: str, prompt: str, image: str, max_new_tokens: int = 128) -> str:
    """One greedy reply of the vision-language model in `model_dir` to `prompt` about the image file:
    the answer the version's MLflow server gives (serving/vision_chat_model.py)."""
    import torch
    from transformers import AutoProcessor

    from peftflow.serving.vision_chat_model import greedy_reply

    if not vision.is_vision_language(model_dir):
        raise UserError(f"--image given, but the model at {model_dir} is not a vision-language model")
    if not Path(image).is_file():
        raise UserError(f"--image {image}: file not found")
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=False)  # peftflow's own published models
    model = (
        vision.model_class(model_dir).from_pretrained(model_dir, dtype=torch.float32, trust_remote_code=False).eval()
    )
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": str(Path(image).resolve())}},
                {"type": "text", "text": prompt},
            ],
        }
    ]
    return greedy_reply(model, processor, messages, max_new_tokens)[0]
