"""Bad data, bad dataset_info.json, bad rows: each a one-line UserError naming the file, row or key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from peftflow.config import RunConfig
from peftflow.data import prepare_dataset
from peftflow.errors import UserError

GOOD_ROWS = [{"instruction": "q", "output": "a"}]


def prepare_error(root: Path, model: str, **options) -> str:
    with pytest.raises(UserError) as caught:
        prepare_dataset(RunConfig(dataset=options.pop("dataset", "qa"), dataset_dir=str(root), **options), model)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "file_name, content, expected",
    [
        ("qa.json", '[\n{"instruction": "q", "output": "a"},\n{"instruction": \n]', "qa.json: line 4: invalid JSON"),
        ("qa.jsonl", '{"instruction": "q", "output": "a"}\n{"instruction": "q",\n', "qa.jsonl: line 2: invalid JSON"),
        ("qa.json", '{"instruction": "q", "output": "a"}', "qa.json: expected a JSON list of row objects, got dict"),
        ("qa.json", "[]", "qa.json: no rows; the dataset is empty"),
        ("qa.csv", "question,output\nq,a\n", "qa.csv: missing columns instruction (has: question, output)"),
        ("qa.csv", "", "qa.csv: missing columns instruction, output"),
        (
            "qa.json",
            b'[{"instruction": "caf\xe9", "output": "a"}]',
            "qa.json: line 1: not UTF-8 text (byte 0xe9 at offset 21)",
        ),
        ("qa.parquet", b"not parquet at all", "qa.parquet: not a readable parquet file"),
        ("qa.txt", "hello", "qa.txt: unsupported file type '.txt'"),
    ],
    ids=["json", "jsonl", "json-object", "empty", "csv-columns", "csv-empty", "not-utf8", "parquet", "txt"],
)
def test_unreadable_data_files(write_dataset, tiny_model, file_name, content, expected):
    root = write_dataset({"qa": {"file_name": file_name}}, {file_name: content})
    message = prepare_error(root, tiny_model)
    assert f"{root}/{expected}" in message


def test_json_lines_in_a_json_file_are_read_as_llamafactory_does(write_dataset, tiny_model):
    root = write_dataset({"qa": {"file_name": "qa.json"}}, {"qa.json": '{"instruction": "q", "output": "a"}\n' * 2})
    assert prepare_dataset(RunConfig(dataset="qa", dataset_dir=str(root), val_size=0), tiny_model).train_rows == 2


def test_dataset_info_problems(write_dataset, tiny_model, tmp_path):
    root = write_dataset({"demo_orders": {"file_name": "qa.json"}}, {"qa.json": GOOD_ROWS})
    info = f"{root}/dataset_info.json"
    assert (
        prepare_error(root, tiny_model, dataset="demo_order")
        == f"{info}: no dataset named 'demo_order' (did you mean 'demo_orders'?)"
    )
    (root / "dataset_info.json").unlink()
    assert (
        prepare_error(root, tiny_model) == f"{info}: not found; dataset_dir must hold a LLaMA-Factory dataset_info.json"
    )
    assert "dataset_dir: directory not found" in prepare_error(tmp_path / "nowhere", tiny_model)


@pytest.mark.parametrize(
    "entry, expected",
    [
        ({"file_name": "missing.json"}, "missing.json: data file not found (dataset 'qa' in"),
        (
            {"file_name": "qa.json", "formating": "sharegpt"},
            "'qa' has unknown key 'formating' (did you mean 'formatting'?)",
        ),
        (
            {"hf_hub_url": "llamafactory/alpaca_en"},
            "'qa' is a hub dataset (hf_hub_url); hub datasets are not available offline",
        ),
        ({"ms_hub_url": "llamafactory/alpaca_en"}, "'qa' is a hub dataset (ms_hub_url)"),
        ({"cloud_file_name": "gs://b/qa.json"}, "'qa': cloud_file_name must be an s3://bucket/key URI"),
        ({"file_name": "qa.json", "ranking": "yes"}, "'qa' ranking must be true or false"),
        ({"file_name": "qa.json", "formatting": "openai"}, "'qa' formatting 'openai' is not supported"),
        ({"file_name": "qa.json", "columns": {"videos": "videos"}}, "'qa' columns videos are not supported for alpaca"),
        (
            {"file_name": "qa.json", "formatting": "sharegpt", "columns": {"videos": "videos"}},
            "'qa' columns videos are not supported for sharegpt",
        ),
        ({"formatting": "alpaca"}, "'qa' has no file_name"),
    ],
)
def test_bad_dataset_info_entries(write_dataset, tiny_model, entry, expected):
    root = write_dataset({"qa": entry}, {"qa.json": GOOD_ROWS})
    assert expected in prepare_error(root, tiny_model)


def test_file_name_cannot_leave_dataset_dir(write_dataset, tiny_model, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text('[{"instruction": "q", "output": "a"}]')
    root = write_dataset(
        {
            "up": {"file_name": "../outside.json"},
            "absolute": {"file_name": str(outside)},
            "link": {"file_name": "link.json"},
        },
        {},
    )
    (root / "link.json").symlink_to(outside)
    assert "'up' file_name '../outside.json' points outside dataset_dir" in prepare_error(
        root, tiny_model, dataset="up"
    )
    assert f"'absolute' file_name '{outside}' is an absolute path" in prepare_error(
        root, tiny_model, dataset="absolute"
    )
    assert f"'link' file_name 'link.json' points outside dataset_dir {root} (resolves to {outside})" in prepare_error(
        root, tiny_model, dataset="link"
    )


def test_invalid_rows_are_all_named_in_one_error(write_dataset, tiny_model):
    def chat(*turns):
        return {"conversations": [{"from": role, "value": text} for role, text in turns]}

    rows = [
        chat(("human", "q"), ("gpt", "a")),
        chat(("gpt", "a"), ("human", "q")),  # 2: wrong order
        chat(("human", "q"), ("bot", "a")),  # 3: unknown role
        chat(("human", "q"), ("gpt", "  ")),  # 4: empty response
        {"conversations": [{"from": "human", "value": 7}, {"from": "gpt", "value": "a"}]},  # 5: not a string
        chat(("human", "q"), ("gpt", "a"), ("human", "q")),  # 6: ends with user
        chat(("human", "q"), ("function_call", "{}")),  # 7: a call without a name
    ]
    root = write_dataset({"qa": {"file_name": "chat.json", "formatting": "sharegpt"}}, {"chat.json": rows})
    assert prepare_error(root, tiny_model) == (
        f"{root}/chat.json: 6 invalid rows: row 2: wrong turn order (turn 1 is assistant, expected user or "
        "observation); "
        "row 3: unknown role 'bot' (turn 2); row 4: empty response (turn 2); "
        "row 5: field 'value' is not a string (turn 1); row 6: wrong turn order (ends with a user turn) "
        "(set on_invalid_rows: drop to skip them)"
    )


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"instruction": "q", "output": ""}, "row 1: empty response"),
        ({"instruction": "q", "output": ["a", "b"]}, "row 1: field 'output' is not a string (got list)"),
        ({"instruction": "q"}, "row 1: field 'output' is missing"),
        ({"instruction": "", "input": "", "output": "a"}, "row 1: empty prompt"),
        (
            {"instruction": "q", "output": "a", "history": [["only one"]]},
            "row 1: history item is not a [user, assistant] pair of strings (item 1)",
        ),
    ],
)
def test_invalid_alpaca_rows(write_dataset, tiny_model, row, expected):
    root = write_dataset({"qa": {"file_name": "qa.json", "columns": {"history": "history"}}}, {"qa.json": [row]})
    assert f"{root}/qa.json: 1 invalid rows: {expected} (set on_invalid_rows" in prepare_error(root, tiny_model)


def test_all_rows_invalid_in_drop_mode(write_dataset, tiny_model):
    root = write_dataset({"qa": {"file_name": "qa.json"}}, {"qa.json": [{"instruction": "q", "output": ""}]})
    assert prepare_error(root, tiny_model, on_invalid_rows="drop") == "dataset 'qa': none of its 1 rows is valid"


def test_tokenizer_template_needs_a_tokenizer_chat_template(write_dataset, tiny_model, tmp_path):
    bare = tmp_path / "bare-tokenizer"
    bare.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(tiny_model) / name, bare / name)
    root = write_dataset({"qa": {"file_name": "qa.json"}}, {"qa.json": GOOD_ROWS})
    assert f"template 'tokenizer': the tokenizer at {bare} has no chat template" in prepare_error(root, str(bare))


def test_json_lines_in_a_json_file_broken_deep_inside_name_the_broken_line(write_dataset, tiny_model):
    lines = ['{"instruction": "q", "output": "a"}'] * 40
    lines[36] = '{"instruction": "q", "output": "a"'  # line 37: the closing brace lost
    root = write_dataset({"qa": {"file_name": "qa.json"}}, {"qa.json": "\n".join(lines) + "\n"})
    assert prepare_error(root, tiny_model) == f"{root}/qa.json: line 37: invalid JSON: Expecting ',' delimiter"
    # a JSON document over several lines with something after it is still named where the extra starts
    root = write_dataset(
        {"qa": {"file_name": "qa.json"}}, {"qa.json": '[\n{"instruction": "q", "output": "a"}\n]\n]\n'}
    )
    assert prepare_error(root, tiny_model) == f"{root}/qa.json: line 4: invalid JSON: Extra data"


def test_openai_style_sharegpt_turns_name_the_keys_looked_for_and_the_mapping(write_dataset, tiny_model):
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    entry = {"file_name": "chat.json", "formatting": "sharegpt"}
    root = write_dataset({"qa": entry}, {"chat.json": rows})
    message = prepare_error(root, tiny_model)
    assert message.startswith(f"{root}/chat.json: 1 invalid rows: row 1: field 'conversations' is missing")
    assert (
        f"dataset 'qa' in {root}/dataset_info.json: sharegpt rows are read from column 'conversations', each turn's "
        "role from key 'from' (human, gpt, system, ...) and its text from key 'value'"
    ) in message
    assert (
        'read them by adding "columns": {"messages": "messages"}, "tags": {"role_tag": "role", "content_tag": '
        '"content", '
        '"user_tag": "user", "assistant_tag": "assistant", "system_tag": "system"} to the entry'
    ) in message
    # the column mapped but not the tags: the turn's keys are named, and only the tags are proposed
    root = write_dataset({"qa": {**entry, "columns": {"messages": "messages"}}}, {"chat.json": rows})
    message = prepare_error(root, tiny_model)
    assert "row 1: turn has no 'from' key (turn 1 has role, content)" in message and '"columns"' not in message
    assert 'read them by adding "tags": {"role_tag": "role", "content_tag": "content"' in message
    # dropping every row says why none was kept
    assert "sharegpt rows are read from column" in prepare_error(root, tiny_model, on_invalid_rows="drop")
