"""LLaMA-Factory's model keys do what it documents: rope_scaling, upcast_layernorm, and the
speed-only kernels (flash_attn, enable_liger_kernel) used where the machine has them, else named."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from peftflow.config import RunConfig
from peftflow.derived_models import resolve_start
from peftflow.errors import UserError
from peftflow.models import kernels
from peftflow.models.load import load_base
from peftflow.training.arguments import training_arguments


@pytest.mark.parametrize("kind", ["linear", "dynamic", "yarn", "llama3"])
def test_rope_scaling_stretches_the_start_model_to_cutoff_len(tiny_model, kind):
    cfg = RunConfig(model_name_or_path=tiny_model, rope_scaling=kind, cutoff_len=5000)
    scaled = resolve_start(cfg)
    config = json.loads((Path(scaled.path) / "config.json").read_text())
    rope = config["rope_parameters"]
    # LLaMA-Factory's rule: factor ceil(5000 / 2048) = 3, the model's length raised to cutoff_len
    assert (rope["rope_type"], rope["factor"], config["max_position_embeddings"]) == (kind, 3.0, 5000)
    assert rope.get("original_max_position_embeddings") == (None if kind == "linear" else 2048)
    assert (
        scaled.path != tiny_model
        and scaled.fingerprint != resolve_start(RunConfig(model_name_or_path=tiny_model)).fingerprint
    )
    assert resolve_start(cfg).path == scaled.path  # built once
    if kind == "linear":  # positions read differently: the same tokens give other logits
        ids = torch.arange(1, 65).unsqueeze(0)
        with torch.no_grad():
            before = AutoModelForCausalLM.from_pretrained(tiny_model)(ids).logits
            after = AutoModelForCausalLM.from_pretrained(scaled.path)(ids).logits
        assert not torch.allclose(before, after, atol=1e-4)


def test_rope_scaling_leaves_a_model_that_fits_cutoff_len_alone(tiny_model):
    assert (
        resolve_start(RunConfig(model_name_or_path=tiny_model, rope_scaling="yarn", cutoff_len=1024)).path == tiny_model
    )


def test_rope_scaling_on_a_model_without_rotary_embedding_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=64, vocab_size=64)).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="rope_scaling: .* has no rotary position embedding"):
        resolve_start(RunConfig(model_name_or_path=str(tmp_path), rope_scaling="linear", cutoff_len=128))


def test_upcast_layernorm_keeps_norms_in_float32_under_a_bfloat16_base(tiny_model):
    cfg = RunConfig(model_name_or_path=tiny_model, bf16=True, upcast_layernorm=True)
    model = load_base(tiny_model, cfg, torch.bfloat16)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes["model.norm.weight"] == dtypes["model.layers.0.input_layernorm.weight"] == torch.float32
    assert dtypes["model.layers.0.self_attn.q_proj.weight"] == torch.bfloat16
    plain = load_base(tiny_model, cfg.model_copy(update={"upcast_layernorm": False}), torch.bfloat16)
    assert plain.model.norm.weight.dtype == torch.bfloat16
    ids = torch.arange(1, 17).unsqueeze(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as the Trainer runs it
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)


def test_speed_only_kernels_fall_back_here_and_say_so(tiny_model):
    cfg = RunConfig(model_name_or_path=tiny_model, flash_attn="fa2", enable_liger_kernel=True)
    if torch.cuda.is_available():
        pytest.skip("a GPU machine may have the kernels")
    assert kernels.attention_implementation(cfg) is None and not kernels.use_liger(cfg)
    lines = kernels.missing_kernels(cfg)
    assert [line.split(":")[0] for line in lines] == ["flash_attn", "enable_liger_kernel"]
    assert all("speed only" in line for line in lines)
    assert load_base(tiny_model, cfg).config._attn_implementation == "sdpa"
    eager = cfg.model_copy(update={"flash_attn": "disabled"})
    assert load_base(tiny_model, eager).config._attn_implementation == "eager"
    assert kernels.missing_kernels(eager.model_copy(update={"enable_liger_kernel": False})) == []


def test_ddp_timeout_reaches_the_trainer(tmp_path):
    assert training_arguments(RunConfig(ddp_timeout=7200), tmp_path).ddp_timeout == 7200
