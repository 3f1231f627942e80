"""PEFT methods on the real SmolLM2-135M with short sequences: a few steps lower the loss, the
saved adapter reloads with plain `PeftModel.from_pretrained` and gives the trained model's logits,
and the published version generates after a reload from the registry.

One method per way of touching the real model: QLoRA (adapted linears over NF4 weights through
bitsandbytes, paged optimizer), prefix tuning (past key values, initialised from a text) and prompt
tuning (input embeddings, initialised from the real tokenizer's text). Plain LoRA on this model is
tests/e2e/test_smollm2_cli.py (the demo: trained, merged, published, served). DoRA / rsLoRA, IA3
and P-tuning are the same code paths on the same architecture: they train, reload and publish on
the tiny model of the same family (tests/unit/test_methods.py, tests/integration/test_combinations.py),
and on this model in benchmarks/methods_benchmark.py, which also measures what each learns.

The registry round trip (the costly part) runs here for the adapter kind of version: prefix
tuning, the prompt-family method whose generation path differs most (it feeds past key values);
the merged kind is the demo's, in test_smollm2_cli.py.
"""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from peftflow.builtin.probes import probe_batch
from peftflow.config import RunConfig
from peftflow.data import prepare_dataset
from peftflow.inference import generate_reply
from peftflow.mlflow_io.publishing import publish_adapter
from peftflow.mlflow_io.tracking import configure_mlflow, start_run
from peftflow.models.load import load_base
from peftflow.models.resolve import resolve_model
from peftflow.training.run import run as train_run

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]

SMOLLM2 = "builtin:smollm2-135m-instruct"
CASES = {
    "qlora": dict(finetuning_type="lora", quantization_bit=4, optim="paged_adamw_8bit", learning_rate=2e-3),
    "prefix": dict(finetuning_type="prefix", num_virtual_tokens=8, learning_rate=1e-2,
                   prompt_tuning_init="text", prompt_tuning_init_text="Extract the order as JSON"),
    "prompt": dict(finetuning_type="prompt", num_virtual_tokens=8, learning_rate=3e-2,
                   prompt_tuning_init="text", prompt_tuning_init_text="Extract the order as JSON"),
}
PUBLISHED = {"prefix"}


class _Keep(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.model = model


def _cfg(**overrides) -> RunConfig:
    fields = dict(model_name_or_path=SMOLLM2, max_steps=6, logging_steps=1, save_steps=100, cutoff_len=96,
                  per_device_train_batch_size=4, lr_scheduler_type="constant", max_samples=48, val_size=8)
    return RunConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def smollm2(peftflow_home):
    model = resolve_model(SMOLLM2)
    return model.path, prepare_dataset(_cfg(), model.path)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    configure_mlflow()


@pytest.mark.parametrize("case", list(CASES))
def test_method_on_smollm2_trains_reloads_and_serves(case, smollm2, store, tmp_path):
    model_path, data = smollm2
    cfg = _cfg(**CASES[case], registry={"name": f"e2e-{case}"})
    keep = _Keep()
    result = train_run(cfg, model_path, data.path, tmp_path / "run", callbacks=(keep,))
    losses = [loss for _, loss in result.loss_history]
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    # Every method starts near the base model's loss on this task (about 0.7; a random prefix: 7 to 10).
    assert losses[0] < 1.5, losses

    base = load_base(model_path, cfg) if cfg.quantization_bit else AutoModelForCausalLM.from_pretrained(model_path)
    reloaded = PeftModel.from_pretrained(base, result.adapter_dir).eval()
    batch = probe_batch(AutoTokenizer.from_pretrained(result.adapter_dir))
    with torch.no_grad():
        assert (keep.model.eval()(**batch).logits - reloaded(**batch).logits).abs().max() <= 1e-4

    if case not in PUBLISHED:
        return
    run_id = start_run(cfg, tags={"method": case}, train_key=case)
    version = publish_adapter(run_id, cfg.registry.name, result.adapter_dir, model_path, {"method": case}, {})
    reply = generate_reply(f"models:/{cfg.registry.name}/{version.version}", "Ship two mugs to Oslo.",
                                    max_new_tokens=8)
    assert isinstance(reply, str) and reply.strip()
