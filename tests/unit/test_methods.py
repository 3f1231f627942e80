"""The PEFT method family on the tiny model: each trains, saves, and reloads with plain peft.

Rejected method x option combinations fail at config time with one line naming the keys.
"""

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from peftflow import merge
from peftflow.builtin.probes import probe_batch
from peftflow.config import RunConfig, parse_config
from peftflow.data import prepare_dataset
from peftflow.errors import UserError
from peftflow.evaluation.scoring import compare, generate
from peftflow.methods import METHODS, TRAITS
from peftflow.models.load import load_base
from peftflow.training.arguments import base_dtype
from peftflow.training.run import run as train_run

METHOD_CASES = {
    "lora": dict(finetuning_type="lora"),
    "dora-rslora": dict(finetuning_type="lora", use_dora=True, use_rslora=True, lora_target="q_proj,v_proj"),
    "lora-regex-pissa": dict(finetuning_type="lora", lora_target=r".*\.(q|v)_proj", pissa_init=True),
    "qlora": dict(finetuning_type="lora", quantization_bit=4, optim="paged_adamw_8bit", lora_target="all"),
    "ia3": dict(finetuning_type="ia3", learning_rate=5e-2),
    "prefix": dict(
        finetuning_type="prefix",
        num_virtual_tokens=8,
        learning_rate=3e-2,
        prompt_tuning_init="text",
        prompt_tuning_init_text="Extract the order as JSON",
    ),
    "prompt": dict(
        finetuning_type="prompt",
        num_virtual_tokens=8,
        learning_rate=3e-2,
        prompt_tuning_init="text",
        prompt_tuning_init_text="Extract the order as JSON",
    ),
    "ptuning": dict(finetuning_type="ptuning", num_virtual_tokens=8, learning_rate=1e-2, encoder_hidden_size=32),
}


@pytest.fixture(scope="module")
def data(tiny_model):
    return prepare_dataset(_cfg(tiny_model), tiny_model)


def _cfg(tiny_model, **overrides) -> RunConfig:
    fields = dict(
        model_name_or_path=tiny_model,
        max_steps=8,
        learning_rate=5e-3,
        logging_steps=1,
        save_steps=100,
        per_device_train_batch_size=4,
        lr_scheduler_type="constant",
    )
    return RunConfig(**{**fields, **overrides})


@pytest.mark.parametrize("case", ["prefix", "prompt", "ptuning"])
def test_prompt_family_generation_equals_step_by_step_greedy(case, tiny_model):
    """Batched and left-padded, as evaluation generates: each row is the greedy decode of the
    model's own forward (what training and the held-out loss use), one full forward per token."""
    cfg = _cfg(tiny_model, **METHOD_CASES[case])
    model = METHODS[case].build(load_base(tiny_model, cfg), cfg).eval()
    for p in model.parameters():  # virtual tokens far from their init, so they matter
        if p.requires_grad:
            torch.nn.init.normal_(p, std=1.0)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompts = [
        tok(text, add_special_tokens=False)["input_ids"]
        for text in ("Extract the order as JSON: two mugs to Oslo", "Order: one lamp")
    ]
    got = generate(model, tok, prompts, max_new_tokens=8, batch_size=2, stop_ids=[tok.eos_token_id])
    for prompt, answer in zip(prompts, got):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            for _ in range(8):  # full forward per token: no cache involved
                nxt = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].argmax()
                ids = torch.cat([ids, nxt.view(1, 1)], 1)
                if nxt == tok.eos_token_id:
                    break
        assert answer == tok.decode(ids[0, len(prompt) :], skip_special_tokens=True)


def test_prefix_from_text_starts_at_the_base_models_loss(tiny_model, data):
    """A prefix initialised from the base's keys and values for a text is that text in front of
    the prompt: the loss before training is the base's (a random prefix disturbs every layer)."""
    from datasets import load_from_disk
    from transformers import DataCollatorForSeq2Seq

    rows = load_from_disk(f"{data.path}/train").select_columns(["input_ids", "labels"]).select(range(4))
    batch = DataCollatorForSeq2Seq(AutoTokenizer.from_pretrained(tiny_model), label_pad_token_id=-100)(list(rows))
    cfg = _cfg(tiny_model, **METHOD_CASES["prefix"])

    def loss(model) -> float:
        with torch.no_grad():
            return float(model.eval()(**batch).loss)

    base = loss(load_base(tiny_model, cfg))
    from_text = loss(METHODS["prefix"].build(load_base(tiny_model, cfg), cfg))
    assert abs(from_text - base) < 0.1 * base


@pytest.mark.parametrize("case", list(METHOD_CASES))
def test_method_trains_and_adapter_reloads_with_plain_peft(case, tiny_model, data, tmp_path, keep_model):
    cfg = _cfg(tiny_model, **METHOD_CASES[case])
    result = train_run(cfg, tiny_model, data.path, tmp_path, callbacks=(keep_model,))
    losses = [loss for _, loss in result.loss_history]
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    assert result.method == cfg.finetuning_type and result.optimizer_used
    if cfg.optim.startswith("paged_") and not torch.cuda.is_available():
        assert "unpaged" in result.optimizer_used

    trained = keep_model.model.eval()
    # Reloaded onto the base as it trained (4-bit for QLoRA, bf16 under bf16 autocast); merge.py covers the fp32 base.
    base = load_base(tiny_model, cfg, base_dtype(cfg))
    reloaded = PeftModel.from_pretrained(base, result.adapter_dir).eval()
    batch = probe_batch(AutoTokenizer.from_pretrained(result.adapter_dir))
    with torch.no_grad():
        a, b = trained(**batch).logits, reloaded(**batch).logits
    tol = 1e-3 if case == "lora-regex-pissa" else 1e-5  # PiSSA is converted back to plain LoRA at save
    assert (a - b).abs().max() <= tol

    if not METHODS[cfg.finetuning_type].mergeable:
        # Scored as base + adapter: held-out loss over the real tokens only, and generation.
        small = cfg.model_copy(
            update={
                "evaluation": cfg.evaluation.model_copy(update={"max_samples": 2, "max_new_tokens": 4, "batch_size": 2})
            }
        )
        report = compare({"tuned": result.adapter_dir}, data.path, small, tmp_path / "r.json", tiny_model)
        tuned = report.models["tuned"]
        assert len(tuned.examples) == 2 and tuned.loss == tuned.loss  # not NaN


def test_qlora_merges_into_fp32_base_and_reports_quantization_error(tiny_model, data, tmp_path):
    cfg = _cfg(tiny_model, quantization_bit=4, max_steps=2, optim="adamw_8bit")
    result = train_run(cfg, tiny_model, data.path, tmp_path)
    assert result.optimizer_used.startswith("bitsandbytes.") and "8-bit" in result.optimizer_used
    assert result.compute == "nf4 weights, float32 compute"
    merged = merge.merge(tiny_model, result.adapter_dir, tmp_path / "merged", tolerance=1e-4, train_cfg=cfg)
    assert merged.max_abs_logit_diff <= 1e-4  # fp32 base + adapter vs merged: exact
    assert merged.max_abs_logit_diff_vs_quantized > 0 and 0 <= merged.top1_agreement_vs_quantized <= 1
    plain = AutoModelForCausalLM.from_pretrained(merged.merged_dir)
    assert all(p.dtype == torch.float32 for p in plain.parameters())
    strict = cfg.model_copy(update={"quantized_merge_tolerance": 1e-6})
    with pytest.raises(merge.MergeFidelityError, match="quantized_merge_tolerance .* quantisation error"):
        merge.merge(tiny_model, result.adapter_dir, tmp_path / "m2", tolerance=1e-4, train_cfg=strict)


def test_qlora_keeps_the_frozen_unquantised_weights_in_the_compute_dtype(tiny_model, data, tmp_path):
    """bf16 compute (a GPU's): embeddings, output head and norms stay bf16 (peft's k-bit preparation
    would hold them in float32), the adapters train in float32, and the run learns."""
    cfg = _cfg(tiny_model, quantization_bit=4, bf16=True, max_steps=4, learning_rate=5e-3)
    model = METHODS["lora"].build(load_base(tiny_model, cfg), cfg)
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad and p.dtype.is_floating_point}
    assert frozen == {torch.bfloat16}
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    result = train_run(cfg, tiny_model, data.path, tmp_path)
    assert result.compute == "nf4 weights, bfloat16 compute"
    losses = [loss for _, loss in result.loss_history]
    assert losses[-1] < losses[0], losses


def test_table_rows_match_traits():
    assert set(METHODS) == set(TRAITS)
    assert not METHODS["prefix"].mergeable and not METHODS["prefix"].gradient_checkpointing
    assert METHODS["lora"].traits.supports_kbit and METHODS["ia3"].mergeable


@pytest.mark.parametrize(
    "raw, keys",
    [
        ({"finetuning_type": "prefix", "gradient_checkpointing": True}, ["gradient_checkpointing", "prefix"]),
        ({"finetuning_type": "prompt", "merge": True}, ["merge", "prompt"]),
        ({"finetuning_type": "ptuning", "merge": True}, ["merge", "ptuning"]),
        ({"finetuning_type": "prefix", "quantization_bit": 4}, ["quantization_bit", "prefix"]),
        ({"finetuning_type": "ia3", "quantization_bit": 8}, ["quantization_bit", "ia3"]),
        ({"finetuning_type": "prompt", "use_dora": True}, ["use_dora", "prompt"]),
        ({"finetuning_type": "lora", "pissa_init": True, "lora_init": "olora"}, ["pissa_init", "lora_init"]),
        ({"finetuning_type": "prompt", "prompt_tuning_init": "text"}, ["prompt_tuning_init_text"]),
        (
            {
                "finetuning_type": "prefix",
                "prompt_tuning_init": "text",
                "prompt_tuning_init_text": "x",
                "prefix_projection": True,
            },
            ["prompt_tuning_init", "prefix_projection"],
        ),
        ({"quantization_bit": 4, "quantization_method": "gptq"}, ["quantization_method"]),
        ({"lora_target": "(q_proj"}, ["lora_target"]),
    ],
)
def test_rejected_combinations_name_the_keys(raw, keys):
    with pytest.raises(UserError) as e:
        parse_config(raw)
    msg = str(e.value)
    assert "\n" not in msg and all(k in msg for k in keys), msg


@pytest.mark.parametrize(
    "value, expected",
    [
        ("all", "all"),
        ("q_proj,v_proj", ["q_proj", "v_proj"]),
        ("q_proj", ["q_proj"]),
        (r".*\.(q|v)_proj", r".*\.(q|v)_proj"),
        (["q_proj"], ["q_proj"]),
    ],
)
def test_lora_target_list_or_regex(value, expected):
    assert parse_config({"lora_target": value})[0].lora_target == expected


def test_merge_defaults_follow_the_method():
    assert parse_config({})[0].should_merge
    assert not parse_config({"finetuning_type": "prefix"})[0].should_merge
    assert not parse_config({"merge": False})[0].should_merge


@pytest.mark.parametrize(
    "name, method, merges",
    [
        ("lora-dora", "lora", True),
        ("qlora", "lora", True),
        ("prefix", "prefix", False),
        ("prompt", "prompt", False),
        ("ptuning", "ptuning", False),
        ("ia3", "ia3", True),
    ],
)
def test_example_configs_load(name, method, merges):
    from pathlib import Path

    from peftflow.config import load_config

    cfg, unused = load_config(Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml")
    assert (cfg.finetuning_type, cfg.should_merge, unused) == (method, merges, [])


def test_reading_a_config_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, peftflow.config; sys.exit(int('torch' in sys.modules or 'peft' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
