"""Mixture-of-experts keys on a tiny Qwen3-MoE (4 experts, 2 per token): a `lora_target` list that
names the router adapts it, `moe_aux_loss_coef` adds that multiple of the router's load-balancing
loss, and what cannot work is refused at validate in one line. `lora_target: all` (experts adapted,
router frozen) runs through the whole pipeline in test_architectures.py."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from peftflow.config import RunConfig
from peftflow.data import prepare_dataset
from peftflow.errors import UserError
from peftflow.merge import merge
from peftflow.preflight import check_training_setup
from peftflow.training.run import run as train


@pytest.fixture(scope="module")
def moe_base(peftflow_home) -> str:
    from peftflow.models.resolve import resolve_model

    return resolve_model("builtin:tiny-qwen3-moe").path


def _cfg(base: str, **overrides) -> RunConfig:
    fields = dict(
        model_name_or_path=base,
        max_steps=3,
        learning_rate=1e-2,
        logging_steps=1,
        save_steps=100,
        per_device_train_batch_size=4,
        max_samples=32,
        bf16_autocast=False,
    )
    return RunConfig(**{**fields, **overrides})


def _train(cfg: RunConfig, base: str, out):
    check_training_setup(cfg, base)  # what `validate` runs first
    return train(cfg, base, prepare_dataset(cfg, base).path, out)


def test_naming_the_router_adapts_it(moe_base, tmp_path):
    cfg = _cfg(moe_base, lora_target=["q_proj", "gate"])
    result = _train(cfg, moe_base, tmp_path)
    merged = merge(moe_base, result.adapter_dir, tmp_path / "merged", tolerance=1e-4, train_cfg=cfg)
    base = AutoModelForCausalLM.from_pretrained(moe_base, dtype=torch.float32).state_dict()
    after = AutoModelForCausalLM.from_pretrained(merged.merged_dir, dtype=torch.float32).state_dict()
    changed = {name for name in base if not torch.equal(base[name], after[name])}
    assert changed == {f"model.layers.{i}.{part}.weight" for i in (0, 1) for part in ("mlp.gate", "self_attn.q_proj")}


def test_moe_aux_loss_coef_adds_that_multiple_of_the_router_loss(moe_base, tmp_path):
    """The first step's loss is taken before any update: the same batch and weights each time, so
    what the key adds is coef x the router's loss, linear in coef."""

    def first_loss(coef):
        cfg = _cfg(moe_base, max_steps=1, moe_aux_loss_coef=coef)
        return _train(cfg, moe_base, tmp_path / f"coef-{coef}").loss_history[0][1]

    plain, half, full = first_loss(None), first_loss(0.5), first_loss(1.0)
    router_loss = full - plain
    assert router_loss > 0.5  # ~ top-k (2) when the router spreads tokens evenly
    assert half - plain == pytest.approx(router_loss / 2, rel=1e-3)


@pytest.mark.parametrize(
    ("overrides", "refusal"),
    [
        (
            dict(lora_target="q_proj,gate_proj"),
            "lora_target: .* no module or expert parameter named gate_proj .*experts: experts",
        ),
        (dict(moe_aux_loss_coef=0.01, stage="dpo"), "moe_aux_loss_coef: stage dpo computes its own loss"),
        (dict(merge=False, registry={"vllm_ready": True}), "registry.vllm_ready: lora_target adapts experts.down_proj"),
    ],
)
def test_what_cannot_work_on_an_moe_is_refused_at_validate(moe_base, overrides, refusal):
    with pytest.raises(UserError, match=refusal) as refused:
        check_training_setup(_cfg(moe_base, **overrides), moe_base)
    assert "\n" not in str(refused.value)


def test_moe_aux_loss_coef_on_a_dense_model_is_refused(peftflow_home):
    from peftflow.models.resolve import resolve_model

    dense = resolve_model("builtin:tiny-random").path
    with pytest.raises(UserError, match="moe_aux_loss_coef: .* has no router load-balancing loss"):
        check_training_setup(_cfg(dense, moe_aux_loss_coef=0.01), dense)


def test_naming_only_attention_keeps_a_vllm_ready_adapter(moe_base):
    cfg = _cfg(moe_base, merge=False, lora_target="q_proj,v_proj", registry={"vllm_ready": True})
    check_training_setup(cfg, moe_base)
