"""Which head a checkpoint is loaded with: the language-model head (generation), or the reward head
of `stage: rm`, a one-output linear layer on the last token's hidden state (transformers'
`*ForSequenceClassification` with `num_labels: 1`, the layout TRL's RewardTrainer and published
reward models use). A reward model is saved with `problem_type: regression`, so transformers'
text-classification pipeline returns its raw score, and with the pad token it finds the last token by.

The head is read from the checkpoint (its config's architecture, an adapter's `task_type`), except
for a base that becomes a reward model: the caller says so (`reward=True`)."""

from __future__ import annotations

import json
from pathlib import Path

from peftflow.models import vision

SEQ_CLS = "SEQ_CLS"  # peft's task type of an adapter trained with the head
REWARD_TASK = "text-classification"  # how the registry serves it: text in, its score out


def is_reward_adapter(adapter_dir: str | Path) -> bool:
    config = Path(adapter_dir) / "adapter_config.json"
    return config.is_file() and json.loads(config.read_text()).get("task_type") == SEQ_CLS


def is_reward_model(model_dir: str | Path) -> bool:
    """A reward checkpoint (merged or full), or an adapter trained with the reward head."""
    config = Path(model_dir) / "config.json"
    if config.is_file():
        architectures = json.loads(config.read_text()).get("architectures") or []
        if any(a.endswith("ForSequenceClassification") for a in architectures):
            return True
    return is_reward_adapter(model_dir)


def reward_options(tokenizer_dir: str | Path, trust_remote_code: bool = False) -> dict:
    """from_pretrained arguments that make a checkpoint a reward model: one output, no squashing, and
    the pad id the batches are padded with (the head reads each row's last token before padding)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=trust_remote_code)
    return {"num_labels": 1, "problem_type": "regression", "pad_token_id": pad_id(tokenizer)}


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def load(
    model_dir: str | Path,
    reward: bool,
    tokenizer_dir: str | Path | None = None,
    trust_remote_code: bool = False,
    **kwargs,
):
    """`model_dir` with the reward head (`reward`) or its own; `kwargs` go to from_pretrained."""
    if not reward:
        return vision.model_class(model_dir).from_pretrained(model_dir, trust_remote_code=trust_remote_code, **kwargs)
    from transformers import AutoModelForSequenceClassification

    options = reward_options(tokenizer_dir or model_dir, trust_remote_code)
    return AutoModelForSequenceClassification.from_pretrained(
        model_dir, trust_remote_code=trust_remote_code, **options, **kwargs
    )
