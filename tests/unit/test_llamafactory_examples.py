"""LLaMA-Factory's own example YAMLs (tests/fixtures/llamafactory: train_lora (sft, dpo, rm, kto, pretrain),
train_qlora, merge_lora, v1), with only the model (and the offline dataset) changed, validate and run; `peftflow export`
merges and ships what they train.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from peftflow.config import read_config, read_yaml
from peftflow.data import data_report, prepare_dataset
from peftflow.errors import UserError
from peftflow.export import read_spec, run_export
from peftflow.mlflow_io.publishing import publish_adapter
from peftflow.mlflow_io.tracking import configure_mlflow, start_run
from peftflow.training.run import run as train_run

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "llamafactory"
TRAIN = [
    "train_lora/qwen3_lora_sft.yaml",
    "train_lora/qwen3_lora_dpo.yaml",
    "train_lora/qwen3_lora_reward.yaml",
    "train_lora/qwen3_lora_kto.yaml",
    "train_lora/qwen3_lora_pretrain.yaml",
    "train_qlora/qwen3_lora_sft_otfq.yaml",
    "v1/train_lora_sft.yaml",
    "v1/quantization.yaml",
]


@pytest.mark.parametrize("name", TRAIN)
def test_training_examples_validate(name, tiny_model):
    cfg, unused, _ = read_config(FIXTURES / name)
    report = data_report(cfg, tiny_model)
    assert not report.problems and report.rows_kept > 0 and report.dropped == {}
    assert "do_train" in unused or name.startswith("v1/")


def test_llama3_example_is_refused_in_one_line_for_a_tokenizer_without_its_tokens(tiny_model):
    cfg, _, _ = read_config(FIXTURES / "train_lora" / "llama3_lora_sft.yaml")
    with pytest.raises(
        UserError, match=r"^template 'llama3' needs tokens <\|start_header_id\|> <\|end_header_id\|> <\|eot_id\|> which"
    ):
        data_report(cfg, tiny_model)


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory) -> str:
    """The v0 LoRA example trained for 2 steps (its own values otherwise: batch 1 x 8 accumulation, bf16)."""
    cfg, _, _ = read_config(FIXTURES / "train_lora" / "qwen3_lora_sft.yaml")
    cfg = cfg.model_copy(update={"max_steps": 2, "max_samples": 16, "model_name_or_path": tiny_model})
    data = prepare_dataset(cfg, tiny_model)
    return train_run(cfg, tiny_model, data.path, tmp_path_factory.mktemp("qwen3-lora")).adapter_dir


@pytest.mark.parametrize(
    "name", ["v1/train_lora_sft.yaml", "v1/quantization.yaml", "train_qlora/qwen3_lora_sft_otfq.yaml"]
)
def test_example_trains(name, tiny_model, tmp_path):
    cfg, _, _ = read_config(FIXTURES / name)
    cfg = cfg.model_copy(update={"max_steps": 2, "max_samples": 16, "val_size": 0.0, "model_name_or_path": tiny_model})
    result = train_run(cfg, tiny_model, prepare_dataset(cfg, tiny_model).path, tmp_path)
    assert result.steps == 2 and (Path(result.adapter_dir) / "adapter_config.json").is_file()


def export_config(tmp_path: Path, example: str, **changes) -> Path:
    raw = {**read_yaml(FIXTURES / "merge_lora" / example), "export_dir": str(tmp_path / "exported"), **changes}
    path = tmp_path / example
    path.write_text(yaml.safe_dump(raw))
    return path


def export(path: Path, registered: str | None = None):
    return run_export(read_spec(read_yaml(path), str(path)), registered)


def logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(["Ship four red mugs to Oslo."], return_tensors="pt")).logits


def test_merge_example_exports_a_merged_model(adapter, tiny_model, tmp_path):
    result = export(export_config(tmp_path, "qwen3_lora_sft.yaml", adapter_name_or_path=adapter))
    out = Path(result.export_dir)
    assert result.merged and result.shards == 1 and result.max_abs_logit_diff <= 1e-3 and result.dtype == "float32"
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and tok.padding_side == "left" and tok.eos_token == "<|im_end|>"
    assert GenerationConfig.from_pretrained(out).eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    exported = AutoModelForCausalLM.from_pretrained(out)
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), adapter)
    assert torch.allclose(logits(exported, tok), logits(with_adapter, tok), atol=1e-3)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".exported-")]  # the temp dir is gone


def test_export_shards_to_export_size_and_writes_the_template(adapter, tmp_path):
    # 1 MB shards; `default` is a template LLaMA-Factory writes as the tokenizer's chat template
    result = export(
        export_config(
            tmp_path, "qwen3_lora_sft.yaml", adapter_name_or_path=adapter, export_size=0.001, template="default"
        )
    )
    out = Path(result.export_dir)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert result.shards > 1 and len(set(index["weight_map"].values())) == result.shards
    tensors_in = {f: sum(v == f for v in index["weight_map"].values()) for f in set(index["weight_map"].values())}
    # at most 1 MB a shard, unless one tensor alone is larger (a tensor is never split)
    assert all((out / f).stat().st_size <= 1.05e6 or n == 1 for f, n in tensors_in.items())
    tok = AutoTokenizer.from_pretrained(out)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], tokenize=False
    )
    assert text == "Human: Hi<|im_end|>\nAssistant:Hello<|im_end|>\n"  # LLaMA-Factory's default template
    AutoModelForCausalLM.from_pretrained(out)


def test_full_model_example_reshards_without_an_adapter(tmp_path):
    result = export(export_config(tmp_path, "qwen3_full_sft.yaml"))
    assert not result.merged and result.shards == 1 and result.max_abs_logit_diff is None


def test_v1_export_yaml(adapter, tmp_path):
    path = tmp_path / "v1_export.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": "builtin:tiny-random",
                "template": "qwen3_nothink",
                "peft_config": {
                    "name": "lora",
                    "adapter_name_or_path": adapter,
                    "export_dir": str(tmp_path / "v1-out"),
                    "export_size": 5,
                    "infer_dtype": "bfloat16",
                },
            }
        )
    )
    result = export(path)
    assert result.merged and result.dtype == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(result.export_dir).dtype == torch.bfloat16


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"quantization_bit": 4}, "quantization_bit: never merge an adapter into a quantized model"),
        ({"export_legacy_format": True}, "export_legacy_format: true writes pickle weights"),
        ({"export_quantization_bit": 4}, "export_quantization_bit: peftflow exports unquantized safetensors"),
        ({"export_sise": 2}, "unknown key 'export_sise' (did you mean 'export_size'?)"),
        ({"adapter_name_or_path": "a,b"}, "adapter_name_or_path: peftflow merges one adapter per export"),
    ],
)
def test_export_refusals(tmp_path, changes, message):
    path = export_config(tmp_path, "qwen3_lora_sft.yaml", **changes)
    with pytest.raises(UserError, match="^" + re.escape(f"{path}: {message}")):
        export(path)


def test_v1_quant_config_is_refused(tmp_path):
    raw = {
        "model": "builtin:tiny-random",
        "quant_config": {"name": "bnb", "quantization_bit": 4},
        "peft_config": {"name": "lora", "adapter_name_or_path": "x", "export_dir": str(tmp_path / "o")},
    }
    with pytest.raises(UserError, match="^v1.yaml: quant_config: never merge an adapter into a quantized model"):
        read_spec(raw, "v1.yaml")


def test_export_a_registered_version(adapter, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    configure_mlflow()
    from peftflow.config import RunConfig

    run_id = start_run(RunConfig(registry={"name": "exp-tiny", "experiment": "exp"}), {})
    publish_adapter(run_id, "exp-tiny", adapter, tiny_model, {"base_model": "builtin:tiny-random"}, {})
    result = export(export_config(tmp_path, "qwen3_full_sft.yaml"), registered="models:/exp-tiny@challenger")
    assert result.merged and result.max_abs_logit_diff <= 1e-3
    with pytest.raises(UserError, match="models:/exp-tiny@nope: no such registered model or alias"):
        export(export_config(tmp_path, "qwen3_full_sft.yaml"), registered="models:/exp-tiny@nope")


def test_cli_export_and_its_one_line_refusal(adapter, tmp_path, peftflow_home):
    from typer.testing import CliRunner

    from flows.cli import app

    # --format gguf: the merged export, then one GGUF file beside it, loaded back and compared
    ok = CliRunner().invoke(
        app,
        [
            "export",
            str(export_config(tmp_path, "qwen3_lora_sft.yaml", adapter_name_or_path=adapter)),
            "--format",
            "gguf",
            "--outtype",
            "f32",
        ],
    )
    assert ok.exit_code == 0, ok.output
    exported, gguf_line, round_trip = ok.stdout.splitlines()
    assert exported.startswith(
        f"exported {tmp_path / 'exported'}: 1 safetensors shard(s), float32, merged (max |logit diff|"
    )
    assert gguf_line.startswith(f"{tmp_path / 'exported' / 'model-f32.gguf'}: f32, ")
    assert round_trip.startswith("round trip: greedy agreement 100% on 2 probes")
    # a refusal, as a user sees it: one line on stderr, exit 2
    env = {**os.environ, "PEFTFLOW_HOME": str(peftflow_home), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    path = export_config(tmp_path, "qwen3_lora_sft.yaml", adapter_name_or_path=adapter, quantization_bit=8)
    bad = subprocess.run(
        [sys.executable, "-m", "flows.cli", "export", str(path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        bad.returncode == 2
        and bad.stderr
        == f"error: {path}: quantization_bit: never merge an adapter into a quantized "
        "model (LLaMA-Factory's examples warn the same); drop quantization_bit, the merge goes into the unquantized "
        "base\n"
    )


def test_cli_export_of_a_registered_version_that_fails_is_one_line(adapter, tmp_path, peftflow_home):
    """`export CONFIG --model` whose export fails: one line and exit 2 (it was a NameError: the
    error helper it called had been deleted)."""
    env = {
        **os.environ,
        "PEFTFLOW_HOME": str(peftflow_home),
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
    }
    path = export_config(tmp_path, "qwen3_lora_sft.yaml", adapter_name_or_path=adapter)
    bad = subprocess.run(
        [sys.executable, "-m", "flows.cli", "export", str(path), "--model", "models:/no-such-model@champion"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2, bad.stderr
    assert len(bad.stderr.splitlines()) == 1 and bad.stderr.startswith("error: "), bad.stderr
    assert "no-such-model" in bad.stderr and "NameError" not in bad.stderr
