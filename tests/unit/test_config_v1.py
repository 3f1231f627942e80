"""LLaMA-Factory v1 YAML (USE_V1=1 sft): detected by shape, mapped onto RunConfig, errors in v1 names;
its dataset YAML and message rows (typed content parts, per-turn loss_weight)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from datasets import load_from_disk
from transformers import AutoTokenizer

from peftflow.config import SCHEMA_V0, SCHEMA_V1, parse_config, read_config
from peftflow.config.lf_keys import unheard_note
from peftflow.data import data_report, prepare_dataset
from peftflow.errors import UserError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "llamafactory"


def v1(tmp_path: Path, **keys) -> dict:
    """A minimal v1 config whose train_dataset is one local jsonl of `rows` (keys override)."""
    rows = keys.pop("rows", None)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows or [chat("Hi", "Hello")]))
    return {"model": "builtin:tiny-random", "train_dataset": str(data), "template": "chatml", **keys}


def chat(user: str, answer: str, **weights) -> dict:
    return {
        "messages": [
            {"role": "user", "content": [{"type": "text", "value": user}], **weights.get("user", {})},
            {"role": "assistant", "content": [{"type": "text", "value": answer}], **weights.get("answer", {})},
        ]
    }


def test_v1_example_maps_onto_runconfig():
    cfg, unused, schema = read_config(FIXTURES / "v1" / "train_lora_sft.yaml")
    assert schema == SCHEMA_V1
    assert (
        cfg.model_name_or_path,
        cfg.finetuning_type,
        cfg.lora_rank,
        cfg.lora_alpha,
        cfg.lora_dropout,
        cfg.lora_target,
    ) == ("builtin:tiny-random", "lora", 16, 32, 0.05, "all")
    assert (cfg.per_device_train_batch_size, cfg.cutoff_len, cfg.learning_rate, cfg.max_steps) == (1, 2048, 1e-4, 10)
    assert cfg.template == "qwen3_nothink"  # v1's ModelArguments.template default
    assert cfg.evaluation.max_new_tokens == 128 and cfg.quantization_bit is None
    assert cfg.train_dataset == str(FIXTURES / "v1" / "v1_dataset.yaml")  # found next to the config
    assert unused == ["kernel_config", "dist_config"]  # speed only; sample_backend hf: what peftflow does
    qlora, _, _ = read_config(FIXTURES / "v1" / "quantization.yaml")
    assert qlora.quantization_bit == 4 and qlora.finetuning_type == "lora"
    assert read_config(FIXTURES / "train_lora" / "qwen3_lora_sft.yaml")[2] == SCHEMA_V0


def test_v1_keys_that_change_the_run_are_honoured_and_the_rest_say_why(tmp_path):
    cfg, unused = parse_config(
        v1(
            tmp_path,
            flash_attn="eager",
            resume_from_checkpoint="auto",
            sample_backend="hf",
            init_config={"name": "init_on_meta"},
            save_ckpt_as_hf=True,
            full_determinism=False,
            batching_strategy="normal",
            peft_config={"name": "lora", "export_dir": "out"},
        )
    )
    assert (cfg.flash_attn, cfg.resume_from_checkpoint) == ("disabled", True)
    assert parse_config(v1(tmp_path, resume_from_checkpoint="ckpt/checkpoint-4"))[0].resume_from_checkpoint == (
        "ckpt/checkpoint-4"
    )
    assert sorted(unused) == ["init_config", "peft_config.export_dir", "save_ckpt_as_hf"]
    note = unheard_note(unused)
    assert "init_config (speed only: where the model is materialised" in note
    assert "save_ckpt_as_hf (no effect: peftflow's checkpoints are Hugging Face Trainer checkpoints" in note
    assert "not used" not in note


def test_v1_defaults_and_full_finetuning(tmp_path):
    cfg, _ = parse_config(v1(tmp_path, peft_config={"name": "lora"}, global_batch_size=8, micro_batch_size=2))
    # v1's defaults where they differ from peftflow's: LoRA 8 / 16 / 0.05, lr 1e-4, cutoff 2048
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.learning_rate, cfg.cutoff_len) == (
        8,
        16,
        0.05,
        1e-4,
        2048,
    )
    assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps) == (2, 4)
    assert parse_config(v1(tmp_path))[0].finetuning_type == "full"  # no peft_config: every weight trains


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"peft_config": {"name": "lora", "r": 0}}, "key 'peft_config.r': Input should be greater than 0"),
        ({"micro_batch_size": 0}, "key 'micro_batch_size': Input should be greater than 0"),
        ({"peft_config": {"name": "lora", "rank": 8}}, "unknown key 'peft_config.rank' (did you mean 'r'?)"),
        ({"peft_config": {"name": "freeze"}}, "peft_config.name: freeze: peftflow trains LoRA"),
        (
            {"quant_config": {"name": "bnb", "quantization_bit": 3}},
            "key 'quant_config.quantization_bit': Input should be 4 or 8",
        ),
        ({"quant_config": {"name": "hqq"}}, "quant_config.name: hqq"),
        ({"model_class": "cls"}, "model_class: cls: peftflow fine-tunes causal language models"),
        ({"eval_dataset": "x.yaml"}, "eval_dataset: peftflow holds out val_size rows"),
        (
            {"global_batch_size": 3, "micro_batch_size": 2},
            "global_batch_size 3 is not a multiple of micro_batch_size 2",
        ),
        ({"lora_rank": 8}, "mixes LLaMA-Factory v1 keys (model) with v0 keys (lora_rank)"),
        ({"peft_config": "lora"}, "peft_config must be a mapping with a 'name'"),
        ({"optim_config": {"name": "muon"}}, "key 'optim_config': {'name': 'muon'}: LLaMA-Factory 0.9.5 registers"),
        ({"save_epochs": 1}, "key 'save_epochs': 1: write save_steps"),
        ({"full_determinism": True}, "key 'full_determinism': True: peftflow seeds its runs"),
        ({"batching_strategy": "dynamic_batching"}, "key 'batching_strategy': 'dynamic_batching': it changes"),
        ({"sample_backend": "vllm"}, "key 'sample_backend': 'vllm': held-out answers are generated"),
        ({"flash_attn": "flex"}, "key 'flash_attn': 'flex': one of eager, sdpa, flash_attention_2"),
        (
            {"peft_config": {"name": "lora", "adapter_name_or_path": "a"}},
            "key 'peft_config.adapter_name_or_path': 'a': give the adapter to start from as model",
        ),
    ],
)
def test_v1_errors_name_v1_keys(tmp_path, keys, message):
    with pytest.raises(UserError) as e:
        parse_config(v1(tmp_path, **keys), source="v1.yaml")
    assert str(e.value).startswith("v1.yaml: ") and message in str(e.value), str(e.value)


def test_dataset_yaml_errors(tmp_path):
    def report(info: dict) -> str:
        (tmp_path / "data.yaml").write_text(yaml.safe_dump(info))
        cfg, _ = parse_config(v1(tmp_path, train_dataset=str(tmp_path / "data.yaml")))
        with pytest.raises(UserError) as e:
            prepare_dataset(cfg, "unused")
        return str(e.value)

    assert "'d': source hf_hub (the default): hub datasets are not available offline" in report({"d": {"path": "a/b"}})
    assert "'d' has unknown key 'pth' (did you mean 'path'?)" in report({"d": {"pth": "x", "source": "local"}})
    # v1's pair converter reads preference rows: refused for stage sft, as a ranking dataset is
    assert "is preference pairs; stage: sft reads conversations" in report(
        {"d": {"path": "rows.jsonl", "source": "local", "converter": "pair"}}
    )
    assert "missing.jsonl: data file not found (dataset 'd' in" in report(
        {"d": {"path": "missing.jsonl", "source": "local"}}
    )


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def prepared_rows(tmp_path, tiny_model, rows, **keys) -> list[dict]:
    cfg, _ = parse_config(v1(tmp_path, rows=rows, **keys))
    prepared = prepare_dataset(cfg.model_copy(update={"val_size": 0.0}), tiny_model)
    return list(load_from_disk(f"{prepared.path}/train"))


def learned(tokenizer, row) -> str:
    return tokenizer.decode([t for t in row["labels"] if t != -100])


def test_loss_weight_per_turn_is_honoured(tmp_path, tiny_model, tokenizer):
    rows = [
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "value": "A"}], "loss_weight": 1.0},  # a prompt learned
                {
                    "role": "assistant",
                    "content": [{"type": "text", "value": "B"}],
                    "loss_weight": 0.0,
                },  # an answer masked
                {"role": "user", "content": [{"type": "text", "value": "C"}]},  # default 0
                {"role": "assistant", "content": [{"type": "text", "value": "D"}]},
            ]
        }
    ]  # default 1
    [row] = prepared_rows(tmp_path, tiny_model, rows)
    assert learned(tokenizer, row) == "<|im_start|>user\nA<|im_end|>\n<|im_start|>assistant\nD<|im_end|>\n"


def test_typed_parts_become_thoughts_and_tool_calls(tmp_path, tiny_model, tokenizer):
    call = {"name": "get_weather", "arguments": {"city": "Oslo"}}
    tool = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    rows = [
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "value": "Weather?"}]},
                {"role": "assistant", "content": [{"type": "tool_call", "value": json.dumps(call)}]},
                {"role": "tool", "content": [{"type": "text", "value": "3C"}]},
                {
                    "role": "assistant",
                    "content": [{"type": "reasoning", "value": "cold"}, {"type": "text", "value": "It is 3C."}],
                },
            ],
            "tools": json.dumps([tool]),
        }
    ]
    [row] = prepared_rows(tmp_path, tiny_model, rows, template="qwen3_nothink")
    text = tokenizer.decode(row["input_ids"])
    assert "<tools>\n" + json.dumps({"type": "function", "function": tool}) in text
    assert learned(tokenizer, row) == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>\n'
        "<think>\ncold\n</think>\n\nIt is 3C.<|im_end|>\n"
    )
    assert "<|im_start|>user\n<tool_response>\n3C\n</tool_response><|im_end|>" in text  # the tool turn, masked


@pytest.mark.parametrize(
    "message, reason",
    [
        (
            {"role": "assistant", "content": [{"type": "text", "value": "x"}], "loss_weight": 0.5},
            "loss_weight 0.5 is neither 0 nor 1 (peftflow learns a turn or masks it) (message 2)",
        ),
        (
            {"role": "assistant", "content": [{"type": "image_url", "value": "a.png"}]},
            "content type image_url is not supported in a assistant message (message 2)",
        ),
        (
            {"role": "assistant", "content": "plain text"},
            "field 'content' is not a list of {type, value} parts (message 2)",
        ),
        ({"role": "bot", "content": []}, "unknown role 'bot' (message 2)"),
    ],
)
def test_invalid_v1_rows_are_named(tmp_path, tiny_model, message, reason):
    bad = {"messages": [{"role": "user", "content": [{"type": "text", "value": "q"}]}, message]}
    cfg, _ = parse_config(v1(tmp_path, rows=[chat("q", "a"), bad]))
    report = data_report(cfg, tiny_model)
    assert (report.rows_read, report.rows_kept) == (2, 1)
    with pytest.raises(UserError, match="rows.jsonl: 1 invalid rows: row 2: ") as e:
        prepare_dataset(cfg, tiny_model)
    assert reason in str(e.value)


def test_dataset_yaml_reads_every_entry_with_its_converter(tiny_model, tokenizer):
    cfg, _, _ = read_config(FIXTURES / "v1" / "train_lora_sft.yaml")
    report = data_report(cfg, tiny_model)
    assert report.datasets == ("chats", "orders") and not report.problems
    assert (report.rows_read, report.rows_kept) == (12, 8 + 6)  # orders: size 6, drawn from its 4 rows
    prepared = prepare_dataset(cfg.model_copy(update={"val_size": 0.0}), tiny_model)
    texts = [tokenizer.decode(r["input_ids"]) for r in load_from_disk(f"{prepared.path}/train")]
    assert (
        sum("<|im_start|>user\nRepeat: order" in t for t in texts) == 6
    )  # v1's alpaca: instruction + input, no newline
    assert sum("<think>\nthink of a contrast\n</think>\n\n" in t for t in texts) == 8


def test_guard_set_of_a_v1_run_is_read_from_dataset_dir(tmp_path, tiny_model):
    cfg, _ = parse_config(v1(tmp_path, promotion={"guard_dataset": "demo_general"}))
    guard = cfg.guard_config()
    assert guard.train_dataset is None and data_report(guard, tiny_model).datasets == ("demo_general",)


def openai_pair(user: str, chosen: str, rejected: str, rejected_user: str | None = None) -> dict:
    def side(prompt: str, answer: str) -> list[dict]:
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]

    return {"chosen": side(user, chosen), "rejected": side(rejected_user or user, rejected)}


def test_v1_pair_rows_train_dpo_and_each_bad_pair_is_one_line(tmp_path, tiny_model):
    """v1's `converter: pair` (orca_dpo_pairs' layout: chosen and rejected each a whole conversation),
    read from a v1 dataset YAML by `stage: dpo`: the shared prompt once, both answers prepared."""
    rows = [openai_pair(f"Order {i}?", f"Yes {i}", f"No {i}") for i in range(6)]
    bad = [openai_pair("Hi", "Same", "Same"), openai_pair("Hi", "A", "B", rejected_user="Hello")]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + bad))
    (tmp_path / "data.yaml").write_text(
        yaml.safe_dump({"pairs": {"path": "pairs.jsonl", "source": "local", "converter": "pair"}})
    )
    keys = dict(stage="dpo", model_name_or_path=tiny_model, train_dataset=str(tmp_path / "data.yaml"), val_size=0.0)
    cfg, _ = parse_config(keys)
    report = data_report(cfg, tiny_model)
    assert report.rows_kept == 6
    lines = "\n".join(report.problems)
    assert "chosen equals rejected" in lines and "chosen and rejected differ before their answers" in lines
    cfg, _ = parse_config({**keys, "on_invalid_rows": "drop"})
    train = load_from_disk(f"{prepare_dataset(cfg, tiny_model).path}/train")
    row = train[0]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    chosen = tokenizer.decode([t for t in row["labels"] if t != -100])
    rejected = tokenizer.decode([t for t in row["rejected_labels"] if t != -100])
    assert chosen.startswith("Yes") and rejected.startswith("No") and len(train) == 6
