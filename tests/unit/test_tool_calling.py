"""Sharegpt tool-calling rows (a `tools` column, function_call / observation turns), rendered in the
template's tool format; the built-in demo_tools task; the function_call metric.

Expected texts are LLaMA-Factory 0.9.5's format strings (template.py, tool_utils.py) written out."""

from __future__ import annotations

import json

import pytest
from datasets import load_from_disk
from transformers import AutoTokenizer

from peftflow.config import RunConfig
from peftflow.data import data_report, prepare_dataset
from peftflow.errors import UserError
from peftflow.evaluation.metrics import function_call

TOOL = {
    "name": "get_weather",
    "description": "Weather.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "City"}},
        "required": ["city"],
    },
}
CALL = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'


def turns(*pairs) -> list[dict]:
    return [{"from": f, "value": v} for f, v in pairs]


ROW = {
    "conversations": turns(
        ("human", "Weather in Oslo?"), ("function_call", CALL), ("observation", '{"temp": 3}'), ("gpt", "3 degrees.")
    ),
    "tools": json.dumps([TOOL]),
}
ENTRY = {
    "file_name": "tools.json",
    "formatting": "sharegpt",
    "columns": {"messages": "conversations", "tools": "tools"},
}


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def first_train_row(write_dataset, tiny_model, rows, template, **options) -> dict:
    root = write_dataset({"tools": ENTRY}, {"tools.json": rows})
    cfg = RunConfig(dataset="tools", dataset_dir=str(root), template=template, val_size=0, **options)
    return load_from_disk(f"{prepare_dataset(cfg, tiny_model).path}/train")[0]


def pieces(tokenizer, row) -> tuple[str, str]:
    """(whole text, learned text)."""
    return tokenizer.decode(row["input_ids"]), tokenizer.decode([t for t in row["labels"] if t != -100])


def test_qwen_tool_format(write_dataset, tiny_model, tokenizer):
    text, learned = pieces(tokenizer, first_train_row(write_dataset, tiny_model, [ROW], "qwen"))
    tools = (
        "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        + json.dumps({"type": "function", "function": TOOL})
        + "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
        '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
        "<args-json-object>}\n</tool_call>"
    )
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>\n'
    assert text == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        + tools
        + "<|im_end|>\n"
        "<|im_start|>user\nWeather in Oslo?<|im_end|>\n<|im_start|>assistant\n"
        + call
        + '<|im_start|>user\n<tool_response>\n{"temp": 3}\n</tool_response><|im_end|>\n<|im_start|>assistant\n'
        "3 degrees.<|im_end|>\n"
    )
    assert learned == call + "3 degrees.<|im_end|>\n"  # the call is learned, the observation masked


def test_default_tool_format_where_the_template_has_none(write_dataset, tiny_model, tokenizer):
    text, learned = pieces(tokenizer, first_train_row(write_dataset, tiny_model, [ROW], "smollm"))
    tools = (
        "You have access to the following tools:\n> Tool Name: get_weather\nTool Description: Weather.\nTool Args:\n"
        "  - city (string, required): City\n\nUse the following format if using a tool:\n```\n"
        "Action: tool name (one of [get_weather])\nAction Input: the input to the tool, in a JSON format representing "
        'the kwargs (e.g. ```{"input": "hello world", "num_beams": 5}```)\n```\n'
    )
    call = 'Action: get_weather\nAction Input: {"city": "Oslo"}<|im_end|>\n'
    assert text.startswith("<|im_start|>system\n" + tools + "<|im_end|>\n")
    assert learned == call + "3 degrees.<|im_end|>\n"
    assert '<|im_start|>user\n{"temp": 3}<|im_end|>' in text  # smollm's observation is its user slot
    # The tokenizer's own template reads tool rows as LLaMA-Factory reads a template it parses: default format.
    text, learned = pieces(tokenizer, first_train_row(write_dataset, tiny_model, [ROW], "tokenizer"))
    assert text.startswith("<|im_start|>system\n" + tools + "<|im_end|>\n")
    assert learned == 'Action: get_weather\nAction Input: {"city": "Oslo"}<|im_end|>3 degrees.<|im_end|>'


def test_tool_format_option_overrides_the_template(write_dataset, tiny_model, tokenizer):
    _, learned = pieces(tokenizer, first_train_row(write_dataset, tiny_model, [ROW], "qwen", tool_format="llama3"))
    assert learned == '{"name": "get_weather", "parameters": {"city": "Oslo"}}<|im_end|>\n3 degrees.<|im_end|>\n'


@pytest.mark.parametrize(
    "row, reason",
    [
        (
            {**ROW, "tools": "[{"},
            "row 1: field 'tools' is not a valid tool list (not JSON (Expecting property name enclosed in double "
            "quotes))",
        ),
        (
            {**ROW, "tools": json.dumps([{"description": "x"}])},
            "row 1: field 'tools' is not a valid tool list (tool 1 has no \"name\")",
        ),
        (
            {**ROW, "conversations": turns(("human", "q"), ("function_call", "get_weather(Oslo)"))},
            "row 1: invalid function call (turn 2: not JSON (Expecting value))",
        ),
        (
            {**ROW, "conversations": turns(("human", "q"), ("function_call", '{"name": "get_weather"}'))},
            "row 1: invalid function call (turn 2: call 'get_weather' has no \"arguments\" object)",
        ),
        (
            {**ROW, "conversations": turns(("human", "q"), ("observation", "{}"))},
            "row 1: wrong turn order (turn 2 is observation, expected assistant or function)",
        ),
    ],
)
def test_tool_rows_are_validated_row_by_row(write_dataset, tiny_model, row, reason):
    root = write_dataset({"tools": ENTRY}, {"tools.json": [ROW, row]})
    report = data_report(RunConfig(dataset="tools", dataset_dir=str(root), template="qwen", val_size=0), tiny_model)
    assert (report.rows_read, report.rows_kept) == (2, 1)
    with pytest.raises(UserError) as e:
        prepare_dataset(RunConfig(dataset="tools", dataset_dir=str(root), template="qwen"), tiny_model)
    assert f"tools.json: 1 invalid rows: {reason.replace('row 1', 'row 2')}" in str(e.value)


def test_builtin_tool_calling_demo(tiny_model, tokenizer):
    cfg = RunConfig(dataset="demo_tools", template="qwen", val_size=8, max_samples=40)
    prepared = prepare_dataset(cfg, tiny_model)
    assert (prepared.train_rows, prepared.eval_rows, prepared.dropped) == (32, 8, 0)
    for row in load_from_disk(f"{prepared.path}/eval"):
        call = json.loads(row["reference"])  # every row ends with a call, the scored answer
        assert call["name"] in {"get_weather", "convert_currency", "book_table"}
        prompt = tokenizer.decode(row["prompt_ids"])
        assert "<tools>" in prompt and prompt.endswith("<|im_start|>assistant\n")
        assert function_call(f"<tool_call>\n{row['reference']}\n</tool_call>", row["reference"]) == 1.0


@pytest.mark.parametrize(
    "pred, score",
    [
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>', 1.0),  # qwen
        ('Action: get_weather\nAction Input: {"city": "Oslo"}', 1.0),  # default
        ('{"name": "get_weather", "parameters": {"city": "Oslo"}}', 1.0),  # llama3
        (
            "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n</function>\n</tool_call>",
            1.0,
        ),  # qwen3_5
        ('[{"name": "get_weather", "arguments": {"city": "Oslo"}}]', 1.0),  # mistral
        ('get_weather\n{"city": "Oslo"}', 1.0),  # glm4
        ('{"name": "get_weather", "arguments": {"city": "Lyon"}}', 0.5),  # right function only
        ('{"name": "book_table", "arguments": {"city": "Oslo"}}', 0.0),
        (
            '[{"name": "get_weather", "arguments": {"city": "Oslo"}}, {"name": "get_weather", "arguments": {}}]',
            0.5,
        ),  # extra call
        ("It is sunny in Oslo.", 0.0),
    ],
)
def test_function_call_metric(pred, score):
    assert function_call(pred, CALL) == score


def test_tool_calling_example_config_loads():
    from pathlib import Path

    from peftflow.config import load_config

    cfg, unused = load_config(Path(__file__).resolve().parents[2] / "configs" / "tool-calling.yaml")
    assert (cfg.dataset, cfg.template, cfg.evaluation.metric, unused) == ("demo_tools", "smollm2", "function_call", [])


def test_held_out_calls_are_generated_and_scored(tiny_model, tmp_path):
    from peftflow.evaluation.scoring import compare

    cfg = RunConfig(
        dataset="demo_tools",
        template="qwen",
        val_size=4,
        max_samples=12,
        evaluation={"metric": "function_call", "max_samples": 4, "max_new_tokens": 8, "batch_size": 4},
    )
    prepared = prepare_dataset(cfg, tiny_model)
    report = compare({"base": tiny_model}, prepared.path, cfg, tmp_path / "report.json")
    examples = report.models["base"].examples
    assert report.metric == "function_call" and len(examples) == 4
    for e in examples:  # random weights call nothing sensible: scored, not crashed
        assert json.loads(e["reference"])["name"] and e["score"] == function_call(e["prediction"], e["reference"])
