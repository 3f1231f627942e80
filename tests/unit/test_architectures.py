"""The architecture matrix: each family's tiny built-in (2 layers, hidden 64, SmolLM2's tokenizer,
built from the family's own transformers config) through the pipeline: LoRA with `lora_target: all`
trains and merges exactly, QLoRA trains and merges, the GGUF file loads back with the merged model's
logits (or the family is refused at validate, one line), the merged model publishes as an MLflow
chat model that vLLM would serve. `builtin:tiny-random` (Llama) runs the same steps in
test_train_merge_evaluate.py, test_methods.py and test_serving.py."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from peft.utils import load_peft_weights
from transformers import AutoModelForCausalLM, AutoTokenizer

from peftflow.builtin.models import TINY_FAMILIES
from peftflow.builtin.probes import PROBE_TEXTS
from peftflow.config import RunConfig
from peftflow.data import prepare_dataset
from peftflow.errors import UserError
from peftflow.merge import merge
from peftflow.preflight import check_training_setup
from peftflow.serving import checks as serving_checks
from peftflow.serving import gguf
from peftflow.training.run import run as train

FAMILIES = [name for name in TINY_FAMILIES if name != "tiny-random"]
ATTENTION = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}
DENSE = ATTENTION | {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
EXPERTS = {"experts.gate_up_proj", "experts.down_proj"}  # target_parameters on a transformers 5 MoE
# Where `lora_target: all` puts LoRA in each decoder layer. Phi-3's fused projections are adapted
# whole. On an MoE, the stacked expert parameters are adapted through wrappers of `mlp.experts`
# (gate_up_proj: `mlp.experts.base_layer`, down_proj: `mlp.experts`); the router `mlp.gate` is not.
ADAPTED = {
    "tiny-qwen2": DENSE,
    "tiny-qwen3": DENSE,
    "tiny-gemma3": DENSE,
    "tiny-mistral": DENSE,
    "tiny-phi3": {"self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"},
    "tiny-qwen3-moe": ATTENTION | {"mlp.experts", "mlp.experts.base_layer"},
    "tiny-mixtral": ATTENTION | {"mlp.experts", "mlp.experts.base_layer"},
}
# GGUF refused at validate, in llama.cpp's converter's words. Both come from SmolLM2's tokenizer in
# these bodies, not from the family: transformers 5 loads it for a qwen2 config as Qwen2Tokenizer
# (NFC, Qwen's pre-tokenizer), whose pre-tokenizer the converter does not know by its hash; the
# converter reads Phi-3's vocabulary from a SentencePiece tokenizer.model.
GGUF_REFUSED = {
    "tiny-qwen2": "BPE pre-tokenizer was not recognized",
    "tiny-phi3": "Missing .*tokenizer.model",
}
# Exported, not loaded back: transformers' GGUF loader would build a Llama with random MLP weights.
NO_ROUND_TRIP = {"tiny-mixtral": "mixtral"}
F32_LOGIT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Trained:
    name: str
    base: str
    data: str
    adapter_dir: str
    merged_dir: str
    losses: list[float]
    max_abs_logit_diff: float


def _cfg(base: str, **overrides) -> RunConfig:
    fields = dict(
        model_name_or_path=base,
        lora_target="all",
        max_steps=6,
        learning_rate=1e-2,
        logging_steps=1,
        save_steps=100,
        per_device_train_batch_size=4,
        max_samples=64,
        bf16_autocast=False,
    )
    return RunConfig(**{**fields, **overrides})


@pytest.fixture(scope="module", params=FAMILIES)
def trained(request, peftflow_home, tmp_path_factory) -> Trained:
    """One family's LoRA fine-tune (`lora_target: all`) and its merge; module-scoped and
    parametrized, so pytest runs every test of a family on one training before the next family."""
    from peftflow.models.resolve import resolve_model

    name = request.param
    base = resolve_model(f"builtin:{name}").path
    out = tmp_path_factory.mktemp(name)
    cfg = _cfg(base)
    data = prepare_dataset(cfg, base).path  # one tokenizer for all: prepared once, then cached
    result = train(cfg, base, data, out)
    merged = merge(base, result.adapter_dir, out / "merged", tolerance=F32_LOGIT_TOLERANCE, train_cfg=cfg)
    losses = [loss for _, loss in result.loss_history]
    return Trained(name, base, data, result.adapter_dir, merged.merged_dir, losses, merged.max_abs_logit_diff)


def test_lora_all_trains_and_merges_exactly(trained):
    assert sum(trained.losses[-2:]) < sum(trained.losses[:2]), trained.losses
    assert trained.max_abs_logit_diff <= F32_LOGIT_TOLERANCE
    plain = AutoModelForCausalLM.from_pretrained(trained.merged_dir, dtype=torch.float32)
    assert [type(plain).__name__] == json.loads(Path(trained.base, "config.json").read_text())["architectures"]
    assert not any("lora" in n for n, _ in plain.named_parameters())


def test_lora_all_adapts_each_familys_projections(trained):
    saved = load_peft_weights(trained.adapter_dir, device="cpu")
    layer = "base_model.model.model.layers.0."
    adapted = {key.removeprefix(layer).rsplit(".lora_", 1)[0] for key in saved if key.startswith(layer)}
    assert adapted == ADAPTED[trained.name]
    assert all(key.startswith("base_model.model.model.layers.") for key in saved)  # no head, no embeddings
    assert all(w.abs().sum() > 0 for key, w in saved.items() if ".lora_B." in key)  # trained away from zero
    config = json.loads(Path(trained.adapter_dir, "adapter_config.json").read_text())
    moe = "mlp.experts" in adapted
    assert set(config.get("target_parameters") or ()) == (EXPERTS if moe else set())
    # gate_up_proj fuses two projections of rank r each: peft gives it rank 2r
    assert config["rank_pattern"] == ({r".*\.gate_up_proj": 2 * config["r"]} if moe else {})


def test_moe_merge_changes_the_experts_not_the_router(trained):
    """`lora_target: all` on an MoE: the merge folds the trained expert LoRA into the stacked expert
    weights; the router, frozen, comes out as it went in. A dense family's MLP changes."""
    base = AutoModelForCausalLM.from_pretrained(trained.base, dtype=torch.float32).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(trained.merged_dir, dtype=torch.float32).state_dict()
    changed = {name for name in base if not torch.equal(base[name], merged[name])}
    layer0 = {name.removeprefix("model.layers.0.") for name in changed if name.startswith("model.layers.0.")}
    if "mlp.experts" in ADAPTED[trained.name]:
        assert {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"} <= layer0
        assert not any(".mlp.gate." in name for name in changed)  # no layer's router moved
    else:
        assert "mlp.down_proj.weight" in layer0
    assert not any("norm" in name or "embed" in name for name in changed)


def test_qlora_trains_and_merges_into_the_fp32_base(trained, tmp_path):
    cfg = _cfg(trained.base, quantization_bit=4, max_steps=3)
    result = train(cfg, trained.base, trained.data, tmp_path)
    assert result.compute == "nf4 weights, float32 compute"
    losses = [loss for _, loss in result.loss_history]
    assert losses[-1] < losses[0], losses
    merged = merge(trained.base, result.adapter_dir, tmp_path / "merged", tolerance=F32_LOGIT_TOLERANCE, train_cfg=cfg)
    assert merged.max_abs_logit_diff <= F32_LOGIT_TOLERANCE  # into the fp32 base: exact
    assert merged.max_abs_logit_diff_vs_quantized > 0  # vs the nf4 model it trained on: the quantisation error


def test_gguf_loads_back_or_is_refused_at_validate(trained, tmp_path):
    if trained.name in GGUF_REFUSED:
        cfg = _cfg(trained.base, registry={"gguf_outtype": "f16"})
        with pytest.raises(UserError, match="registry.gguf_outtype: llama.cpp's converter cannot convert") as refused:
            check_training_setup(cfg, trained.base)
        assert re.search(GGUF_REFUSED[trained.name], str(refused.value)) and "\n" not in str(refused.value)
        return
    if trained.name in NO_ROUND_TRIP:
        from gguf import GGUFReader

        from flows.cli_export import _export_gguf

        refusal = f"GGUF loader has no '{NO_ROUND_TRIP[trained.name]}'"
        with pytest.raises(UserError, match=f"--verify: transformers' {refusal}.*; export with --no-verify"):
            _export_gguf(trained.merged_dir, str(tmp_path / "model.gguf"), "f32", verify=True)
        assert not (tmp_path / "model.gguf").exists()  # `peftflow export` refuses before converting
        written = gguf.export(trained.merged_dir, str(tmp_path / "model.gguf"), "f32")  # as with --no-verify
        with pytest.raises(UserError, match=refusal):
            gguf.round_trip(trained.merged_dir, written.path, list(PROBE_TEXTS))
        names = {t.name for t in GGUFReader(written.path).tensors}  # what llama.cpp reads: the experts stacked
        assert {"blk.0.ffn_gate_inp.weight", "blk.0.ffn_gate_exps.weight", "blk.0.ffn_down_exps.weight"} <= names
        return
    # the converter's dry run (validate) passes wherever the export does: the export is the stronger check
    written = gguf.export(trained.merged_dir, str(tmp_path / "model.gguf"), "f32")
    check = gguf.round_trip(trained.merged_dir, written.path, list(PROBE_TEXTS[1:]), max_new_tokens=4)
    assert check.max_abs_logit_diff <= F32_LOGIT_TOLERANCE and check.greedy_agreement == 1.0


def test_validate_accepts_gguf_for_a_family_the_converter_reads(peftflow_home):
    """The dry run does not refuse what converts: an MoE, whose experts the converter restacks."""
    from peftflow.models.resolve import resolve_model

    base = resolve_model("builtin:tiny-qwen3-moe").path
    check_training_setup(_cfg(base, registry={"gguf_outtype": "f16"}), base)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """One sqlite MLflow store for the module (a new one per test costs seconds of migrations);
    cwd in a temporary dir, so nothing lands in ./mlruns."""
    from peftflow.mlflow_io.tracking import configure_mlflow

    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        mp.chdir(root)
        configure_mlflow()
        yield root


def test_merged_model_is_a_vllm_ready_chat_model(trained, registry):
    import mlflow

    from peftflow.mlflow_io.publishing import publish_model
    from peftflow.mlflow_io.tracking import start_run

    adapter = serving_checks.adapter_problems(trained.adapter_dir, trained.base)
    if "mlp.experts" in ADAPTED[trained.name]:  # vLLM would not serve the expert LoRA unmerged
        assert [p.split(" ", 1)[0] for p in adapter] == ["target_parameters"]
    else:
        assert adapter == []
    report = serving_checks.check_dir(trained.merged_dir)
    assert (report.kind, report.problems) == ("merged", [])
    run_id = start_run(RunConfig(registry={"name": trained.name, "experiment": "arch"}), {})
    publish_model(run_id, trained.name, trained.merged_dir, {"base_model": f"builtin:{trained.name}"}, {})
    messages = [{"role": "user", "content": PROBE_TEXTS[1]}]
    served = mlflow.pyfunc.load_model(f"models:/{trained.name}@challenger")
    (answer,) = served.predict({"messages": messages, "max_tokens": 4})
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == _greedy_chat_reply(trained.merged_dir, messages, 4)


def _greedy_chat_reply(model_dir: str, messages: list[dict], max_new_tokens: int) -> str:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True).strip()
