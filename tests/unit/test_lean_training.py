"""The lean paths give the same numbers as the stock ones: chunked supervised-only loss vs the
model's own loss, shard-by-shard merge vs peft's merge_and_unload."""

import json
import math

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from peftflow import merge
from peftflow.config import RunConfig
from peftflow.data import prepare_dataset
from peftflow.losses import supervised_ce, supports_chunked_loss
from peftflow.methods import get_method
from peftflow.models.load import load_base
from peftflow.training import memory
from peftflow.training.arguments import base_dtype, bf16_autocast
from peftflow.training.run import run as train_run


def _lora_model(tiny_model, **lora):
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(r=4, target_modules="all-linear", **lora)
    )
    for name, param in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero; a non-zero adapter makes the comparison bite
            torch.nn.init.normal_(param, std=0.05)
    return model


def _batch():
    torch.manual_seed(1)
    ids = torch.randint(0, 2000, (3, 24))
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0  # right padding
    labels = ids.clone()
    labels[:, :9] = -100  # masked prompt
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _grads(model):
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return grads


@pytest.mark.parametrize("num_items", [None, 50])
def test_chunked_loss_equals_stock_loss_and_gradients(tiny_model, num_items):
    model = _lora_model(tiny_model)
    batch = _batch()
    extra = {"num_items_in_batch": torch.tensor(num_items)} if num_items else {}
    stock = model(**batch, **extra).loss
    stock.backward()
    stock_grads = _grads(model)
    # chunk of 5 positions: several chunks, the last one partial
    ours = supervised_ce(model, batch, num_items_in_batch=extra.get("num_items_in_batch"), chunk_positions=5)
    ours.backward()
    assert abs(float(ours) - float(stock)) < 1e-5
    for name, grad in _grads(model).items():
        torch.testing.assert_close(grad, stock_grads[name], atol=1e-6, rtol=1e-4, msg=name)


def test_chunked_loss_is_for_adapters_inside_the_layers_only(tiny_model):
    lora = RunConfig(model_name_or_path=tiny_model)
    prompt = RunConfig(model_name_or_path=tiny_model, finetuning_type="prompt")
    assert supports_chunked_loss(get_method(lora).build(load_base(tiny_model, lora), lora))
    # prompt tuning's virtual tokens are added in PeftModel.forward, which the chunked path skips
    assert not supports_chunked_loss(get_method(prompt).build(load_base(tiny_model, prompt), prompt))


def test_bf16_autocast_is_off_when_asked_or_when_weights_are_already_half():
    assert not bf16_autocast(RunConfig(bf16_autocast=False))
    assert not bf16_autocast(RunConfig(bf16=True))
    assert bf16_autocast(RunConfig(bf16_autocast=True))
    with pytest.raises(ValueError, match="bf16_autocast and fp16"):
        RunConfig(bf16_autocast=True, fp16=True)


def test_only_a_frozen_base_is_held_in_bf16_under_autocast():
    for method in ("lora", "ia3", "prefix"):
        assert base_dtype(RunConfig(bf16_autocast=True, finetuning_type=method)) == torch.bfloat16
    assert base_dtype(RunConfig(bf16_autocast=False)) == torch.float32
    # full fine-tuning's base weights are the master weights; PiSSA rewrites them as residuals,
    # which bf16 would round; a k-bit base computes in compute_dtype
    assert base_dtype(RunConfig(bf16_autocast=True, finetuning_type="full")) == torch.float32
    assert base_dtype(RunConfig(bf16_autocast=True, lora_init="pissa")) == torch.float32
    assert base_dtype(RunConfig(bf16_autocast=True, quantization_bit=4)) == torch.float32


def test_bf16_autocast_trains_on_a_machine_without_a_gpu(tiny_model, tmp_path, keep_model):
    # transformers refuses bf16 without a GPU unless the run is marked as a CPU run
    cfg = RunConfig(
        model_name_or_path=tiny_model,
        bf16_autocast=True,
        max_steps=2,
        save_steps=100,
        logging_steps=1,
        additional_target="lm_head",
    )
    result = train_run(cfg, tiny_model, prepare_dataset(cfg, tiny_model).path, tmp_path, callbacks=(keep_model,))
    assert result.steps == 2 and all(math.isfinite(loss) for _, loss in result.loss_history)
    # The frozen base in bf16 (autocast casts no weight), everything that trains in fp32 (the
    # optimizer's master weights): the adapters, and the trained copy of a base module too.
    dtypes = {(p.requires_grad, p.dtype) for p in keep_model.model.parameters()}
    assert dtypes == {(False, torch.bfloat16), (True, torch.float32)}, dtypes
    assert any("modules_to_save" in n and p.requires_grad for n, p in keep_model.model.named_parameters())
    assert result.compute == "bfloat16 base, float32 trainable + bf16 autocast"


def test_activation_estimate_is_near_what_autograd_saves(tiny_model):
    cfg = RunConfig(model_name_or_path=tiny_model)
    model = get_method(cfg).build(load_base(tiny_model, cfg), cfg).train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):  # each storage once; the frozen weights autograd keeps are not activations
        if t.untyped_storage().data_ptr() not in weights:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(10, 1000, (4, 64))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        supervised_ce(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    ratio = memory.activation_bytes(model.config, 4 * 64, 4) / sum(saved.values())
    assert 0.67 < ratio < 1.5, ratio


def test_gradient_checkpointing_auto_follows_memory_need(tiny_model):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model)
    assert memory.choose_gradient_checkpointing("auto", True, config, 10**9, 4)[0]  # terabytes: never fits
    off, why = memory.choose_gradient_checkpointing("auto", True, config, 64, 4)
    assert not off and why.startswith("auto: activations of the longest batch")
    assert memory.choose_gradient_checkpointing("auto", False, config, 10**9, 4) == (
        False,
        "auto: this method does not support it",
    )
    assert memory.choose_gradient_checkpointing(True, True, config, 64, 4) == (True, "set in the config")


def test_peak_memory_is_this_runs_peak():
    """After reset_peak the peak is what the process holds from then on, not an earlier high-water mark.

    The 256 MB are an anonymous mapping, unmapped on close: whether memory freed through malloc goes
    back to the OS depends on the allocator's state, which the tests that ran earlier in the same
    worker leave behind. With torch.ones this test failed in a full run and passed alone."""
    import mmap

    memory.reset_peak()
    block = mmap.mmap(-1, 256 * 2**20)
    block.write(b"\1" * len(block))  # touched: resident
    high = memory.peak_mb()
    block.close()
    memory.reset_peak()
    assert memory.peak_mb() < high - 200


@pytest.fixture(scope="module")
def sharded_base(tiny_model, tmp_path_factory):
    """The tiny model re-saved as several safetensors shards."""
    base = tmp_path_factory.mktemp("sharded") / "base"
    AutoModelForCausalLM.from_pretrained(tiny_model).save_pretrained(base, max_shard_size="2MB")
    assert len(list(base.glob("*.safetensors"))) > 1
    return str(base)


def test_stream_merge_equals_merge_and_unload(sharded_base, tmp_path):
    _lora_model(sharded_base).save_pretrained(tmp_path / "adapter")
    assert merge.stream_merge(sharded_base, str(tmp_path / "adapter"), tmp_path / "streamed")

    expected = (
        PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(sharded_base, dtype=torch.float32), tmp_path / "adapter"
        )
        .merge_and_unload()
        .state_dict()
    )
    index = json.loads((tmp_path / "streamed" / "model.safetensors.index.json").read_text())
    streamed = {}
    for shard in set(index["weight_map"].values()):
        streamed |= load_file(tmp_path / "streamed" / shard)
    assert set(streamed) <= set(expected) and len(list((tmp_path / "streamed").glob("*.safetensors"))) > 1
    changed = 0
    for name, tensor in streamed.items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-6, rtol=0, msg=name)
        changed += "proj" in name
    assert changed  # the LoRA-targeted weights are among those compared
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "streamed").state_dict()
    for name, tensor in expected.items():  # tied / absent keys come back as transformers rebuilds them
        torch.testing.assert_close(reloaded[name], tensor, atol=1e-6, rtol=0, msg=name)


def test_stream_merge_declines_what_it_cannot_stream(sharded_base, tmp_path):
    _lora_model(sharded_base, use_dora=True).save_pretrained(tmp_path / "dora")
    assert not merge.stream_merge(sharded_base, str(tmp_path / "dora"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
