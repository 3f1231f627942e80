"""The model a run starts from: `model_name_or_path` naming an SFT adapter (a local adapter dir or a
registered adapter version) trains on its base with the adapter merged in, built once; a registered
start is recorded as the run's parent version."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from peftflow.config import RunConfig
from peftflow.data import prepare_dataset
from peftflow.lineage import lineage
from peftflow.mlflow_io.aliases import set_alias
from peftflow.mlflow_io.publishing import publish_adapter
from peftflow.mlflow_io.tracking import start_run
from peftflow.stages import get_workflow


@pytest.fixture
def sft_adapter(tiny_model, tmp_path) -> Path:
    """A LoRA adapter on the tiny model whose weights change its logits (lora_B not zero)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    adapter = tmp_path / "sft-adapter"
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).save_pretrained(
        adapter
    )
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(adapter)
    return adapter


def logits(model_dir: str, tiny_model: str) -> torch.Tensor:
    ids = AutoTokenizer.from_pretrained(tiny_model)("hello world", return_tensors="pt").input_ids
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(model_dir)(ids).logits


def dpo_from(start: str) -> RunConfig:
    return RunConfig(stage="dpo", model_name_or_path=start, dataset="demo_order_pairs", max_samples=16, val_size=4)


def test_an_adapter_dir_starts_as_its_base_with_it_merged(tiny_model, sft_adapter):
    cfg = dpo_from(str(sft_adapter))
    models = get_workflow(cfg).resolve(cfg)
    assert Path(models.model.path).name.startswith("adapted-") and models.model.ref == str(sft_adapter)
    assert torch.allclose(logits(models.model.path, tiny_model), logits(str(sft_adapter), tiny_model), atol=1e-4)
    assert not torch.allclose(logits(models.model.path, tiny_model), logits(tiny_model, tiny_model), atol=1e-3)
    assert get_workflow(cfg).resolve(cfg) == models  # built once, then found in the model cache
    assert models.model.registered == ""


def test_a_registered_adapter_version_is_the_parent_in_the_lineage(tiny_model, sft_adapter, mlflow_home):
    run_id = start_run(RunConfig(registry={"name": "sft", "experiment": "exp"}), {})
    version = publish_adapter(run_id, "orders-sft", str(sft_adapter), tiny_model, {"method": "lora"}, {"score": 0.5})
    set_alias("orders-sft", "champion", version.version, "the SFT champion", "test")
    cfg = dpo_from("models:/orders-sft@champion")
    models = get_workflow(cfg).resolve(cfg)
    assert models.model.registered == "models:/orders-sft/1"
    assert torch.allclose(logits(models.model.path, tiny_model), logits(str(sft_adapter), tiny_model), atol=1e-4)
    data = prepare_dataset(cfg, models.model.path)
    tags = lineage(cfg, models, data, "key", "flow-1")
    assert tags["parent_version"] == "models:/orders-sft/1" and tags["base_model"] == "models:/orders-sft@champion"
    assert tags["base_model_fingerprint"] == models.model.fingerprint and tags["data_fingerprint"] == data.fingerprint
