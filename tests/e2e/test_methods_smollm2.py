"""Every example method config on the real SmolLM2-135M, on a tiny task (48 rows, 96 tokens, 6
steps, constant learning rate, otherwise the config's own settings): the loss starts near the base
model's (about 0.68; a randomly initialised prefix started at 7 to 10) and ends well below it, so a
method that stops learning fails the suite; the saved adapter reloads with plain
`PeftModel.from_pretrained` and gives the trained model's logits; the prefix version generates
after a reload from the registry.

Plain LoRA (configs/demo.yaml) is tests/e2e/test_smollm2_cli.py: the demo trained, merged,
published, served and scored. benchmarks/methods_benchmark.py measures what each config learns on
its full budget (docs/methods.md).

The registry round trip (the costly part) runs here for the adapter kind of version: prefix
tuning, the prompt-family method whose generation path differs most (it feeds past key values);
the merged kind is the demo's, in test_smollm2_cli.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoTokenizer

from peftflow.builtin.probes import probe_batch
from peftflow.config import RunConfig, load_config
from peftflow.data import prepare_dataset
from peftflow.inference import generate_reply
from peftflow.mlflow_io.publishing import publish_adapter
from peftflow.mlflow_io.tracking import configure_mlflow, start_run
from peftflow.models.load import load_base
from peftflow.models.resolve import resolve_model
from peftflow.training.arguments import base_dtype
from peftflow.training.run import run as train_run

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]

SMOLLM2 = "builtin:smollm2-135m-instruct"
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# Each example config's loss after 6 steps (P-tuning 12), as a fraction of its first (measured
# 0.07 to 0.70): the LoRA family and IA3 learn fastest; prompt tuning and P-tuning move only their
# virtual tokens.
WELL_BELOW = {"lora-dora": 0.4, "qlora": 0.4, "ia3": 0.4, "prefix": 0.5, "prompt": 0.85, "ptuning": 0.85}
PUBLISHED = {"prefix"}


TINY_TASK = dict(
    max_steps=6,
    logging_steps=1,
    save_steps=100,
    cutoff_len=96,
    per_device_train_batch_size=4,
    lr_scheduler_type="constant",
    max_samples=48,
    val_size=8,
)


# P-tuning's first Adam steps at lr 1e-2 jolt its encoder: at a constant lr, 6 steps left the held-out
# loss 3.5x the base's (seed 42) or unchanged (seed 1) on a 2-core AMD machine; 12 steps with 2 of
# warm-up and cosine decay halve it for both seeds. (The demo's 40 steps recover without warm-up:
# json_fields 1.000; with 10% warm-up 0.758.)
TINY_TASK_FOR = {"ptuning": dict(max_steps=12, lr_scheduler_type="cosine", warmup_steps=2)}


def _cfg(name: str | None = None, **overrides) -> RunConfig:
    """configs/<name>.yaml on the tiny task (the demo config without a name)."""
    cfg, _ = load_config(CONFIGS / f"{name or 'demo'}.yaml")
    return cfg.model_copy(update={**TINY_TASK, **TINY_TASK_FOR.get(name, {}), **overrides})


@pytest.fixture(scope="module")
def smollm2(peftflow_home):
    model = resolve_model(SMOLLM2)
    return model.path, prepare_dataset(_cfg(), model.path)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    configure_mlflow()


@pytest.mark.parametrize("case", list(WELL_BELOW))
def test_method_on_smollm2_learns_reloads_and_serves(case, smollm2, store, tmp_path, keep_model):
    model_path, data = smollm2
    cfg = _cfg(case)
    cfg = cfg.model_copy(update={"registry": cfg.registry.model_copy(update={"name": f"e2e-{case}"})})
    result = train_run(cfg, model_path, data.path, tmp_path / "run", callbacks=(keep_model,))
    losses = [loss for _, loss in result.loss_history]
    # Near the base's loss at the start (QLoRA's 4-bit base: about 1.0), well below it at the end.
    assert losses[0] < 1.2, losses
    assert sum(losses[-2:]) < WELL_BELOW[case] * sum(losses[:2]), losses

    base = load_base(model_path, cfg, base_dtype(cfg))  # as it trained: 4-bit for QLoRA, bf16 under bf16 autocast
    reloaded = PeftModel.from_pretrained(base, result.adapter_dir).eval()
    batch = probe_batch(AutoTokenizer.from_pretrained(result.adapter_dir))
    with torch.no_grad():
        assert (keep_model.model.eval()(**batch).logits - reloaded(**batch).logits).abs().max() <= 1e-4

    if case not in PUBLISHED:
        return
    run_id = start_run(cfg, tags={"method": case}, train_key=case)
    version = publish_adapter(run_id, cfg.registry.name, result.adapter_dir, model_path, {"method": case}, {})
    reply = generate_reply(f"models:/{cfg.registry.name}/{version.version}", "Ship two mugs to Oslo.", max_new_tokens=8)
    assert isinstance(reply, str) and reply.strip()
