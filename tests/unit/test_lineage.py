"""The train key: stable across releases for an unchanged config (a changed key retrains every cached
run), changed by anything that shapes the weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftflow.config import load_config
from peftflow.data import prepare_dataset
from peftflow.lineage import KEYED_AT_DEFINITION, train_key

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
MODEL_FP, DATA_FP, TEACHER_FP = "model-fingerprint", "data-fingerprint", "teacher-fingerprint"


@pytest.fixture(scope="module")
def demo():
    return load_config(DEMO)[0]


def test_the_demo_keeps_its_train_key(demo):
    # Digests printed by peftflow at commit 7a2ffee (before the template rename `default` -> `tokenizer`
    # and the fields train_dataset, enable_thinking, preserve_thinking, tool_format, default_system):
    # train_key(load_config("configs/demo.yaml")[0], MODEL_FP, DATA_FP[, TEACHER_FP]).
    assert demo.template == "tokenizer"
    assert train_key(demo, MODEL_FP, DATA_FP) == "c9dab1b40c985105"
    assert train_key(demo, MODEL_FP, DATA_FP, TEACHER_FP) == "6e61ab3504fb26db"


def test_the_demo_keeps_its_prepared_data_fingerprint(demo, tiny_model):
    # Printed by peftflow at commit 7a2ffee: prepare_dataset(configs/demo.yaml, builtin:tiny-random).fingerprint.
    assert prepare_dataset(demo, tiny_model).fingerprint == "f25be22315186629"


@pytest.mark.parametrize(
    "update",
    [
        {"enable_thinking": False},
        {"preserve_thinking": True},
        {"tool_format": "qwen"},
        {"default_system": "Answer in JSON."},
        {"train_dataset": "data.yaml"},
    ],
)
def test_a_field_added_since_counts_once_it_leaves_its_default(demo, update):
    assert not set(update) & KEYED_AT_DEFINITION
    assert train_key(demo.model_copy(update=update), MODEL_FP, DATA_FP) != train_key(demo, MODEL_FP, DATA_FP)


@pytest.mark.parametrize("update", [{"template": "smollm2"}, {"lora_rank": 16}, {"seed": 1}])
def test_a_field_the_key_always_covered_still_counts(demo, update):
    assert train_key(demo.model_copy(update=update), MODEL_FP, DATA_FP) != train_key(demo, MODEL_FP, DATA_FP)
