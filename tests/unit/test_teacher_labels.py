"""kd_unlabeled_dataset: the teacher answers prompts without answers, the answers join the training
split (the held-out split unchanged), cached by teacher, data and generation settings."""

import os

import pytest
from datasets import load_from_disk
from transformers import AutoTokenizer

from peftflow.builtin.datasets import make_rows
from peftflow.config import RunConfig
from peftflow.data import prepare_dataset
from peftflow.data.tokenize import ChatEncoder
from peftflow.errors import UserError
from peftflow.stages.distill.labelling import teacher_answers, teacher_labelled
from peftflow.stages.distill.teacher import resolve_teacher

COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}
INFO = {
    "orders": {"file_name": "orders.json", "columns": COLUMNS},
    "prompts": {"file_name": "prompts.json", "columns": COLUMNS},
    "chats": {"file_name": "chats.jsonl", "formatting": "sharegpt"},
}


def _config(root, **overrides) -> RunConfig:
    fields = dict(
        stage="distill",
        dataset="orders",
        dataset_dir=str(root),
        val_size=4,
        kd_unlabeled_dataset="prompts,chats",
        kd_label_max_new_tokens=6,
    )
    return RunConfig(
        **{**fields, "teacher": overrides.pop("teacher"), "model_name_or_path": overrides.pop("student"), **overrides}
    )


@pytest.fixture
def datasets(write_dataset):
    prompts = [{k: v for k, v in row.items() if k != "output"} for row in make_rows(6, seed=7)]
    chat = '{"conversations": [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "dropped"}]}\n'
    return write_dataset(INFO, {"orders.json": make_rows(12), "prompts.json": prompts, "chats.jsonl": chat})


def test_teacher_answers_join_the_train_split_and_are_cached(datasets, tiny_model, tiny_finetune):
    # The teacher: the tiny model fine-tuned on the demo task (its greedy answers are text, not blanks).
    cfg = _config(datasets, teacher=tiny_finetune[1], student=tiny_model)
    teacher = resolve_teacher(cfg)
    data = prepare_dataset(cfg, tiny_model)
    labelled = teacher_labelled(cfg, teacher, tiny_model, data)
    assert (labelled.train_rows, labelled.eval_rows) == (data.train_rows + 7, data.eval_rows)
    assert labelled.fingerprint != data.fingerprint

    train = load_from_disk(f"{labelled.path}/train")
    assert train[: data.train_rows] == load_from_disk(f"{data.path}/train")[:]
    assert load_from_disk(f"{labelled.path}/eval")[:] == load_from_disk(f"{data.path}/eval")[:]
    # An added row is the prompt, then the teacher's greedy answer as the supervised tokens.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    added = train[data.train_rows]
    answer = tokenizer.decode([t for t in added["labels"] if t != -100], skip_special_tokens=True)
    prompt = make_rows(6, seed=7)[0]
    assert f"{prompt['instruction']}\n{prompt['input']}" in tokenizer.decode(added["input_ids"])
    encoder = ChatEncoder(tiny_model, cfg.template)
    greedy = teacher_answers(
        cfg, teacher.path, encoder, [[{"role": "user", "content": f"{prompt['instruction']}\n{prompt['input']}"}]]
    )
    assert answer.strip() == greedy[0].strip() and answer.strip()

    # Unchanged inputs: the cached dir, not a second generation; sampling is another dataset.
    stats = f"{labelled.path}/stats.json"
    written = os.stat(stats).st_mtime_ns
    assert teacher_labelled(cfg, teacher, tiny_model, data) == labelled
    assert os.stat(stats).st_mtime_ns == written
    sampled = teacher_labelled(cfg.model_copy(update={"kd_label_temperature": 1.0}), teacher, tiny_model, data)
    assert sampled.fingerprint != labelled.fingerprint


def test_bad_prompt_rows_and_misplaced_keys_are_one_line_errors(datasets, tiny_model, write_dataset):
    from peftflow.config import parse_config
    from peftflow.preflight import preflight

    with pytest.raises(UserError, match="only apply to stage: distill"):
        parse_config({"kd_unlabeled_dataset": "prompts"})
    bad = write_dataset(
        {**INFO, "broken": {"file_name": "broken.json", "columns": COLUMNS}},
        {"broken.json": [{"instruction": "fine"}, {"input": "no instruction"}]},
    )
    cfg = _config(bad, teacher=tiny_model, student=tiny_model, kd_unlabeled_dataset="broken")
    with pytest.raises(UserError, match=r"broken.json: 1 invalid rows: row 2: field 'instruction' is missing"):
        preflight(cfg)
    with pytest.raises(UserError, match="no dataset named 'missing'"):
        preflight(cfg.model_copy(update={"kd_unlabeled_dataset": "missing"}))
