"""LLaMA-Factory dataset formats and file types, and the named chat templates."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import load_from_disk
from transformers import AutoTokenizer

from peftflow.config import RunConfig
from peftflow.data import end_of_turn_token_id, prepare_dataset
from peftflow.data.formats import InvalidRow, RowFormat
from peftflow.errors import UserError


def learned_text(tokenizer, labels: list[int]) -> str:
    return tokenizer.decode([t for t in labels if t != -100])


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


# As LLaMA-Factory documents them (data/README.md); written unchanged.
DATASET_INFO = {
    "alpaca_full": {
        "file_name": "alpaca_full.json",
        "columns": {
            "prompt": "instruction",
            "query": "input",
            "response": "output",
            "system": "system",
            "history": "history",
        },
    },
    "chat_roles": {
        "file_name": "chat_roles.jsonl",
        "formatting": "sharegpt",
        "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    },
    "table_csv": {"file_name": "table.csv", "columns": {"prompt": "question", "response": "answer"}},
    "table_parquet": {"file_name": "table.parquet", "columns": {"prompt": "question", "response": "answer"}},
    "folder": {"file_name": "parts", "formatting": "sharegpt"},
}
ALPACA_ROW = {
    "instruction": "Translate",
    "input": "hallo",
    "output": "hello",
    "system": "Be brief.",
    "history": [["hi", "hey"], ["how are you?", "fine"]],
}
CHAT_ROW = {
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
}


def write_all_formats(write_dataset) -> Path:
    root = write_dataset(
        DATASET_INFO,
        {
            "alpaca_full.json": [ALPACA_ROW] * 3,
            "chat_roles.jsonl": "\n".join(json.dumps(CHAT_ROW) for _ in range(3)) + "\n",
            "table.csv": 'question,answer\nWhat is red?,A colour\n"Name, please",Bob\n',
            "parts/a.json": [{"conversations": [{"from": "human", "value": "ping"}, {"from": "gpt", "value": "pong"}]}],
            "parts/b.jsonl": json.dumps(
                {"conversations": [{"from": "human", "value": "ding"}, {"from": "gpt", "value": "dong"}]}
            ),
        },
    )
    pq.write_table(
        pa.table({"question": ["Capital of France?", "Capital of Peru?"], "answer": ["Paris", "Lima"]}),
        root / "table.parquet",
    )
    return root


def test_alpaca_row_becomes_system_history_then_prompt_and_query():
    fmt = RowFormat.from_entry("alpaca_full", DATASET_INFO["alpaca_full"], "dataset_info.json")
    assert fmt.to_conversation(ALPACA_ROW) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hey"},
        {"role": "user", "content": "how are you?"},
        {"role": "assistant", "content": "fine"},
        {"role": "user", "content": "Translate\nhallo"},
        {"role": "assistant", "content": "hello"},
    ]
    assert fmt.to_conversation({"instruction": "Say hi", "output": "hi"}) == [
        {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": "hi"},
    ]


def test_sharegpt_rows_map_roles_through_tags():
    custom = RowFormat.from_entry("chat_roles", DATASET_INFO["chat_roles"], "dataset_info.json")
    assert custom.to_conversation(CHAT_ROW) == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    default = RowFormat.from_entry(
        "d", {"file_name": "x", "formatting": "sharegpt", "columns": {"system": "sys"}}, "info"
    )
    row = {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}], "sys": "S"}
    assert default.to_conversation(row)[0] == {"role": "system", "content": "S"}


def test_prompts_only_rows_need_no_answer_and_drop_a_final_one():
    """kd_unlabeled_dataset reads rows as prompts for the teacher: any format, answers optional."""
    from dataclasses import replace

    alpaca = replace(RowFormat.from_entry("alpaca_full", DATASET_INFO["alpaca_full"], "info"), prompts_only=True)
    assert "output" not in alpaca.required_columns
    assert alpaca.to_conversation({"instruction": "Translate", "input": "hallo"})[-1] == {
        "role": "user",
        "content": "Translate\nhallo",
    }
    assert alpaca.to_conversation(ALPACA_ROW)[-1] == {"role": "user", "content": "Translate\nhallo"}
    chat = replace(RowFormat.from_entry("chat_roles", DATASET_INFO["chat_roles"], "info"), prompts_only=True)
    assert chat.to_conversation(CHAT_ROW) == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "2+2?"},
    ]
    assert chat.to_conversation({"messages": CHAT_ROW["messages"][:2]}) == chat.to_conversation(CHAT_ROW)
    with pytest.raises(InvalidRow, match="empty prompt"):
        alpaca.to_conversation({"instruction": " "})


def test_every_file_type_and_a_folder_prepare_together(write_dataset, tiny_model, tokenizer):
    root = write_all_formats(write_dataset)
    cfg = RunConfig(dataset=",".join(DATASET_INFO), dataset_dir=str(root), val_size=0)
    prepared = prepare_dataset(cfg, tiny_model)
    assert (prepared.train_rows, prepared.dropped) == (3 + 3 + 2 + 2 + 2, 0)
    texts = [tokenizer.decode(r["input_ids"]) for r in load_from_disk(f"{prepared.path}/train")]
    answers = sorted(learned_text(tokenizer, r["labels"]) for r in load_from_disk(f"{prepared.path}/train"))
    assert answers == sorted(
        ["hey<|im_end|>fine<|im_end|>hello<|im_end|>"] * 3
        + ["4<|im_end|>"] * 3
        + [
            "A colour<|im_end|>",
            "Bob<|im_end|>",
            "Paris<|im_end|>",
            "Lima<|im_end|>",
            "pong<|im_end|>",
            "dong<|im_end|>",
        ]
    )
    assert sum("<|im_start|>system\nYou are terse.<|im_end|>" in t for t in texts) == 3
    assert sum("<|im_start|>user\nName, please<|im_end|>" in t for t in texts) == 1


def test_named_templates_through_prepare_dataset(write_dataset, tiny_model, tokenizer):
    """The pipeline uses the table templates (every one is checked token by token in test_templates.py)."""
    root = write_dataset(
        {"qa": {"file_name": "qa.json"}}, {"qa.json": [{"instruction": "Hi", "output": "Hello there"}]}
    )

    def first_row(template: str) -> dict:
        prepared = prepare_dataset(
            RunConfig(dataset="qa", dataset_dir=str(root), template=template, val_size=0), tiny_model
        )
        return load_from_disk(f"{prepared.path}/train")[0]

    chatml = first_row("chatml")
    assert (
        tokenizer.decode(chatml["input_ids"])
        == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello there<|im_end|>\n"
    )
    assert (
        learned_text(tokenizer, chatml["labels"]) == "Hello there<|im_end|>\n"
    )  # LLaMA-Factory learns the whole answer slot
    default = first_row("default")  # LLaMA-Factory's default, not the tokenizer's template
    assert tokenizer.decode(default["input_ids"]) == "Human: Hi<|im_end|>\nAssistant:Hello there<|im_end|>\n"
    assert learned_text(tokenizer, default["labels"]) == "Hello there<|im_end|>\n"
    assert first_row("tokenizer")["input_ids"] != first_row("smollm2")["input_ids"]


def test_end_of_turn_token_is_the_generation_stop(tokenizer):
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert {
        end_of_turn_token_id(tokenizer, t) for t in ("tokenizer", "default", "chatml", "smollm2", "alpaca", "empty")
    } == {im_end}


def test_template_errors(tokenizer, write_dataset, tiny_model):
    with pytest.raises(
        UserError,
        match=r"template 'llama3' needs tokens <\|start_header_id\|> .* which the tokenizer at \S+ does not have",
    ):
        end_of_turn_token_id(tokenizer, "llama3")
    with pytest.raises(UserError, match=r"unknown template 'chatm' \(did you mean 'chatml'\?"):
        end_of_turn_token_id(tokenizer, "chatm")
    root = write_dataset({"qa": {"file_name": "qa.json"}}, {"qa.json": [{"instruction": "Hi", "output": "Hello"}]})
    with pytest.raises(
        UserError, match=f"template 'llama3' needs tokens .* the tokenizer at {tiny_model} does not have"
    ):
        prepare_dataset(RunConfig(dataset="qa", dataset_dir=str(root), template="llama3"), tiny_model)
