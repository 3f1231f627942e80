"""How a chat model is logged so MLflow's scoring server serves it as a chat model.

MLflow 3.17's transformers flavor has the inference task `llm/v1/chat`: its pyfunc (what
`mlflow models serve`, and every platform that serves MLflow models as pyfunc, calls) takes an
OpenAI-style request `{"messages": [...], "max_tokens": N, "temperature": ..., "stop": [...]}`,
applies the tokenizer's chat template with the generation prompt, maps `max_tokens` to
`max_new_tokens`, and answers with a `chat.completion` object (choices, usage, finish_reason).
MLflow sets the signature itself for this task (and refuses another one): its inputs are the
messages and the generation params (`max_tokens`, `temperature`, `top_p`, `top_k`, `stop`, ...);
its `params` schema is empty, so generation settings travel in the request body, not in `params`.

What MLflow 3.17 does and does not do here (read in mlflow/transformers/llm_inference_utils.py):
- `llm/v1/chat` exists only for `text-generation` pipelines. An image-text-to-text pipeline cannot
  be logged with it, and its pyfunc has no branch for image-text-to-text at all (`predict` raises
  "not enabled for pyfunc predict functionality"): vision-language versions stay loadable with
  `mlflow.transformers.load_model` and `peftflow generate --image`, not servable by MLflow.
- Without `max_tokens` in the request, the model_config below decides (`DEFAULT_MAX_NEW_TOKENS`);
  transformers' own default (`max_length=20`, prompt included) would cut the answer to nothing.
- `stop` makes MLflow load a slow tokenizer from the path the model was logged from
  (`source_model_name`): it works only where that directory exists. peftflow's templates end a
  turn with the EOS token, so the generation config stops at the end of turn without it.
- Greedy by default (`do_sample: False`), like peftflow's evaluation: the served answers are the
  ones the gate scored.
- Passing the pipeline (not a components dict) keeps MLflow from asking the Hugging Face Hub for
  the task of a local model path (`transformers.pipelines.get_task`), which fails offline.
"""

from __future__ import annotations

from typing import Any

CHAT_TASK = "llm/v1/chat"
TEXT_TASK = "text-generation"
DEFAULT_MAX_NEW_TOKENS = 256


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def log_options(model, tokenizer) -> dict[str, Any]:
    """Keyword arguments for `mlflow.transformers.log_model` of a causal LM and its tokenizer:
    a chat model (its tokenizer has a chat template) is logged as `llm/v1/chat`, else as plain
    `text-generation` (a string in, the continuation out)."""
    if not has_chat_template(tokenizer):
        return {"transformers_model": {"model": model, "tokenizer": tokenizer}, "task": TEXT_TASK}
    from transformers import pipeline

    return {
        "transformers_model": pipeline(TEXT_TASK, model=model, tokenizer=tokenizer),
        "task": CHAT_TASK,
        "model_config": {"do_sample": False, "max_new_tokens": DEFAULT_MAX_NEW_TOKENS},
    }
