"""A method that cannot be merged (prefix tuning) through the whole finetune flow: no merge
stage, scored as base + adapter, published as an adapter version that reloads onto its base."""

import pytest
import torch
from mlflow import MlflowClient
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from flows.finetune import finetune
from peftflow.mlflow_io.downloads import download_model_dir
from tests.integration.conftest import task_states, tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("prefect")]


def test_prefix_tuning_skips_merge_and_publishes_an_adapter(harness, env, tiny_model):
    cfg = tiny_config(
        tiny_model,
        env,
        finetuning_type="prefix",
        num_virtual_tokens=8,
        learning_rate=3e-2,
        registry={"name": "tiny-prefix"},
    )
    state = finetune(cfg, return_state=True)
    result = state.result()
    assert result.version == "1"
    assert "merge-adapter" not in task_states(state.state_details.flow_run_id)
    assert "prefix adapters cannot be merged; published as an adapter version" in result.summary
    assert {"base", "tuned"} <= set(result.scores)

    version = MlflowClient().get_model_version("tiny-prefix", "1")
    assert version.tags["peftflow.kind"] == "adapter" and version.tags["method"] == "prefix"
    assert version.tags["base_model_path"]
    run = MlflowClient().get_run(result.run_id).data
    assert {"peftflow.optimizer_used", "peftflow.compute", "peftflow.gradient_checkpointing"} <= set(run.tags)
    assert {"trainable_params", "total_params", "model_footprint_mb", "peak_memory_mb", "seconds_per_step"} <= set(
        run.metrics
    )

    adapter = download_model_dir("models:/tiny-prefix/1")
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(version.tags["base_model_path"]), adapter
    ).eval()
    tok = AutoTokenizer.from_pretrained(adapter)
    ids = tok("Hello", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
