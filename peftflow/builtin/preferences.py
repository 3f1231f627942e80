"""The built-in preference task: the order-extraction records of datasets.py, where the labelled
data disagree on one convention and preference pairs settle it.

`demo_orders_mixed` is the order task as a team's annotators wrote it: in a share of its rows the
customer's name is written "Last, First", elsewhere "First Last". An SFT model trained on it learns
both, so its `json_fields` score on records in the house style ("First Last") stays short of 1.
`demo_order_pairs` holds LLaMA-Factory ranking rows on new messages: chosen in the house style,
rejected with the name reversed, the SFT model's own mistake. DPO on the pairs should move the model
to the house style (the targeted property) while the other three fields hold. `demo_order_feedback` is
the same signal unpaired, as LLaMA-Factory's KTO reads it (its `kto_en_demo` layout: sharegpt messages
with a boolean `label` column mapped as `kto_tag`): each of its new messages answered once, in the
house style (desirable, `true`) or with the name reversed (undesirable, `false`), half each."""

from __future__ import annotations

import json
import random

from peftflow.builtin.datasets import make_rows

MIXED_SHARE = 0.5  # rows of demo_orders_mixed with the name reversed
PAIRS_SEED = 23  # pair messages drawn apart from the SFT rows'
FEEDBACK_SEED = 29  # feedback messages drawn apart from the SFT rows' and the pairs'

DATASET_INFO = {
    "demo_orders_mixed": {
        "file_name": "demo_orders_mixed.json",
        "formatting": "alpaca",
        "columns": {"prompt": "instruction", "query": "input", "response": "output"},
    },
    "demo_order_pairs": {
        "file_name": "demo_order_pairs.json",
        "formatting": "alpaca",
        "ranking": True,
        "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"},
    },
    "demo_order_feedback": {  # LLaMA-Factory's kto_en_demo entry
        "file_name": "demo_order_feedback.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "kto_tag": "label"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    },
}


def reversed_name(output: str) -> str:
    """The record with its customer written "Last, First"."""
    record = json.loads(output)
    first, last = record["customer"].split(" ", 1)
    return json.dumps(record | {"customer": f"{last}, {first}"})


def make_mixed_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed + 1)
    return [r | {"output": reversed_name(r["output"])} if rng.random() < MIXED_SHARE else r for r in make_rows(n, seed)]


def make_pairs(n: int, seed: int = PAIRS_SEED) -> list[dict]:
    return [
        {
            "instruction": r["instruction"],
            "input": r["input"],
            "chosen": r["output"],
            "rejected": reversed_name(r["output"]),
        }
        for r in make_rows(n, seed)
    ]


def make_feedback(n: int, seed: int = FEEDBACK_SEED) -> list[dict]:
    """`n` KTO rows {"messages": [user, assistant], "label": desirable}: half (shuffled) answered in the
    house style and marked true, the others with the name reversed and marked false."""
    desirable = [i < n // 2 for i in range(n)]
    random.Random(seed + 1).shuffle(desirable)
    return [
        {
            "messages": [
                {"role": "user", "content": f"{r['instruction']}\n{r['input']}"},
                {"role": "assistant", "content": r["output"] if good else reversed_name(r["output"])},
            ],
            "label": good,
        }
        for r, good in zip(make_rows(n, seed), desirable)
    ]


def write_preference_datasets(
    dataset_dir, n: int = 640, pairs: int = 1024, seed: int = 0, feedback: int = 1024
) -> dict:
    (dataset_dir / "demo_orders_mixed.json").write_text(json.dumps(make_mixed_rows(n, seed), indent=1))
    (dataset_dir / "demo_order_pairs.json").write_text(json.dumps(make_pairs(pairs), indent=1))
    (dataset_dir / "demo_order_feedback.json").write_text(json.dumps(make_feedback(feedback), indent=1))
    return DATASET_INFO
