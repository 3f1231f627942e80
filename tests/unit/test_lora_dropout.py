"""LoRA dropout keeping a seed (peftflow/training/lora_dropout.py): the same dropout, the backward
right, nothing kept but the input, peft's modules back afterwards, and a run that trains with it."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from peftflow.config import RunConfig
from peftflow.data import prepare_dataset
from peftflow.training.lora_dropout import DroppedLinear, keep_mask, seeded_lora_dropout
from peftflow.training.run import run as train_run


def test_the_mask_drops_p_of_the_elements_and_the_same_seed_gives_the_same_mask():
    shape = torch.Size([64, 1000])
    for p in (0.05, 0.3):
        keep = keep_mask(shape, p, seed=7, device=torch.device("cpu"))
        assert abs(1 - float(keep.float().mean()) - p) < 0.005, p
        assert torch.equal(keep, keep_mask(shape, p, seed=7, device=torch.device("cpu")))
        assert not torch.equal(keep, keep_mask(shape, p, seed=8, device=torch.device("cpu")))


def test_backward_matches_the_numerical_gradient():
    x = torch.randn(3, 5, 12, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: DroppedLinear.apply(x, w, 0.3, 1234), (x, w))
    # and it is dropout: the dropped inputs, scaled by 1/(1-p)
    keep = keep_mask(x.shape, 0.3, 1234, x.device)
    want = torch.nn.functional.linear(x * keep / 0.7, w)
    assert torch.allclose(DroppedLinear.apply(x, w, 0.3, 1234), want)


def _lora(tiny_model, dropout: float):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    config = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear")
    return get_peft_model(base, config)


def _saved_bytes(model, ids) -> int:
    """Bytes autograd keeps for the backward pass, each storage once."""
    storages: dict[int, int] = {}

    def keep(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model(input_ids=ids, labels=ids).loss.backward()
    return sum(storages.values())


def test_dropout_keeps_what_no_dropout_keeps_and_peft_modules_come_back(tiny_model):
    ids = torch.randint(0, 1000, (4, 64))
    plain, dropped = _lora(tiny_model, 0.0).train(), _lora(tiny_model, 0.1).train()
    stock = _saved_bytes(dropped, ids)
    modules_before = [type(m) for m in dropped.modules()]
    with seeded_lora_dropout(dropped) as changed:
        assert changed == sum(1 for n, _ in dropped.named_modules() if n.endswith("lora_A.default"))
        seeded = _saved_bytes(dropped, ids)
        dropped.eval()  # evaluation: no dropout, peft's own output
        with torch.no_grad():
            seeded_eval = dropped(input_ids=ids).logits
    assert seeded <= _saved_bytes(plain, ids) * 1.01 < stock, (seeded, stock)
    assert [type(m) for m in dropped.modules()] == modules_before
    assert not any(m.training for m in dropped.modules())  # the mode the model was left in
    with torch.no_grad():
        assert torch.allclose(dropped(input_ids=ids).logits, seeded_eval, atol=1e-6)


def test_a_checkpointed_layer_recomputes_the_same_mask(tiny_model):
    ids = torch.randint(0, 1000, (2, 32))

    def grads(checkpointing: bool) -> list[torch.Tensor]:
        model = _lora(tiny_model, 0.2).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        with seeded_lora_dropout(model):
            torch.manual_seed(5)
            model(input_ids=ids, labels=ids).loss.backward()
        return [p.grad for p in model.parameters() if p.requires_grad]

    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads(False), grads(True)))


def test_a_run_with_lora_dropout_trains_and_saves_peft_adapters(tiny_model, tmp_path):
    from peft import PeftModel

    cfg = RunConfig(
        model_name_or_path=tiny_model,
        lora_dropout=0.1,
        max_steps=6,
        learning_rate=1e-2,
        logging_steps=1,
        save_steps=100,
        per_device_train_batch_size=4,
    )
    result = train_run(cfg, tiny_model, prepare_dataset(cfg, tiny_model).path, tmp_path)
    losses = [loss for _, loss in result.loss_history]
    assert losses[-1] < losses[0], losses
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), result.adapter_dir)
    assert reloaded.peft_config["default"].lora_dropout == 0.1
    q_proj = reloaded.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.lora_dropout["default"], torch.nn.Dropout)
