"""A method that cannot be merged (prefix tuning) through the whole finetune flow: no merge
stage, scored as base + adapter, published as an adapter version that reloads onto its base."""

import pytest
import torch
from mlflow import MlflowClient
from peft import PeftModel
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.testing.utilities import prefect_test_harness
from transformers import AutoModelForCausalLM, AutoTokenizer

from flows.finetune import finetune
from peftflow import registry
from peftflow.config import RunConfig

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("prefect")]


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def env(tmp_path, monkeypatch, peftflow_home):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return tmp_path


def tiny_config(tiny_model, tmp_path, **overrides) -> RunConfig:
    fields = dict(
        model_name_or_path=tiny_model, output_dir=str(tmp_path / "runs"), max_steps=6, learning_rate=5e-3,
        logging_steps=2, save_steps=3, per_device_train_batch_size=4,
        registry={"name": "tiny-itest"}, promotion={"metric": "perplexity"},
        evaluation={"metric": "json_fields", "max_samples": 4, "max_new_tokens": 8, "batch_size": 4})
    return RunConfig(**{**fields, **overrides})


def task_states(flow_run_id) -> dict[str, str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}


def test_prefix_tuning_skips_merge_and_publishes_an_adapter(harness, env, tiny_model):
    cfg = tiny_config(tiny_model, env, finetuning_type="prefix", num_virtual_tokens=8, learning_rate=3e-2,
                      registry={"name": "tiny-prefix"})
    state = finetune(cfg, return_state=True)
    result = state.result()
    assert result.version == "1"
    assert "merge-adapter" not in task_states(state.state_details.flow_run_id)
    assert "prefix adapters cannot be merged; published as an adapter version" in result.summary
    assert {"base", "tuned"} <= set(result.scores)

    version = MlflowClient().get_model_version("tiny-prefix", "1")
    assert version.tags["peftflow.kind"] == "adapter" and version.tags["method"] == "prefix"
    assert version.tags["base_model_path"]
    assert "peftflow.optimizer_used" in MlflowClient().get_run(result.run_id).data.tags

    adapter = registry.download_model_dir("models:/tiny-prefix/1")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(version.tags["base_model_path"]),
                                      adapter).eval()
    tok = AutoTokenizer.from_pretrained(adapter)
    ids = tok("Hello", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
