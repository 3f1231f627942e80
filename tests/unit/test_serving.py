"""Serving-ready versions: GGUF export and its round trip, vLLM-ready adapter checks, chat
versions through MLflow's pyfunc (the server itself: tests/integration/test_mlflow_serving.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from peftflow.builtin.probes import PROBE_TEXTS
from peftflow.config import RunConfig
from peftflow.errors import UserError
from peftflow.mlflow_io.downloads import download_model_dir
from peftflow.mlflow_io.publishing import publish_adapter, publish_model
from peftflow.mlflow_io.tracking import start_run
from peftflow.serving import checks as serving_checks
from peftflow.serving import gguf as gguf_export

LINEAGE = {"base_model": "builtin:tiny-random", "method": "lora"}
# f32 keeps every weight as it is: the GGUF model computes what the merged model computes, up to
# the order of float operations.
F32_LOGIT_TOLERANCE = 1e-4


def _run_id() -> str:
    return start_run(RunConfig(registry={"name": "tiny", "experiment": "exp"}), {})


# --- GGUF -----------------------------------------------------------------------------------


def test_gguf_export_loads_back_with_the_merged_models_answers(tiny_finetune, tmp_path):
    """f32 here (exact); f16 and llama.cpp's own runtime: benchmarks/gguf_roundtrip.py."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    _, merged = tiny_finetune
    written = gguf_export.export(merged, str(tmp_path / "tiny.gguf"), "f32")
    assert written.size_bytes == Path(written.path).stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.gguf"]  # no partial file left
    check = gguf_export.round_trip(merged, written.path, list(PROBE_TEXTS), max_new_tokens=8)
    assert check.max_abs_logit_diff <= F32_LOGIT_TOLERANCE
    assert check.greedy_agreement == 1.0
    assert all(source.strip() for source, _ in check.answers)  # the probes get real answers, not nothing

    fields = GGUFReader(written.path).fields  # what llama.cpp reads: chat template and end-of-turn EOS
    text = lambda key: bytes(fields[key].parts[fields[key].data[0]]).decode()  # noqa: E731
    tok = AutoTokenizer.from_pretrained(merged)
    assert text("tokenizer.chat_template") == tok.chat_template
    eos = int(fields["tokenizer.ggml.eos_token_id"].parts[fields["tokenizer.ggml.eos_token_id"].data[0]][0])
    assert eos == tok.convert_tokens_to_ids("<|im_end|>")


def test_gguf_export_refuses_what_it_cannot_convert(tiny_finetune, tmp_path):
    adapter, merged = tiny_finetune
    with pytest.raises(UserError, match="is a PEFT adapter"):
        gguf_export.source_dir(adapter)
    with pytest.raises(UserError, match="one of f32, f16, bf16, q8_0"):
        gguf_export.export(merged, str(tmp_path / "x.gguf"), "q4_k")
    broken = tmp_path / "broken"
    shutil.copytree(merged, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "architectures": ["NoSuchModelForCausalLM"]}))
    with pytest.raises(RuntimeError, match="convert_hf_to_gguf failed"):
        gguf_export.export(str(broken), str(tmp_path / "out" / "x.gguf"), "f32")
    assert list((tmp_path / "out").iterdir()) == []  # nothing half-written


def test_gguf_file_attached_to_the_registered_version(mlflow_home, tiny_finetune, tmp_path):
    import mlflow

    _, merged = tiny_finetune
    ref = publish_model(_run_id(), "tiny", merged, LINEAGE, {})
    ref = gguf_export.attach_to_version(ref, merged, "f32", str(tmp_path / "work"))
    assert ref.tags[gguf_export.GGUF_TAG].startswith("model.gguf outtype=f32 bytes=")
    assert gguf_export.attach_to_version(ref, merged, "f32", str(tmp_path / "work")) == ref  # a retry adds nothing
    local = mlflow.artifacts.download_artifacts(artifact_uri="models:/tiny/1/model.gguf", dst_path=str(tmp_path / "dl"))
    assert Path(local).read_bytes() == (tmp_path / "work" / "model.gguf").read_bytes()

    # a rerun of the same training (same version) with another outtype replaces the file and the tag
    f16 = gguf_export.attach_to_version(ref, merged, "f16", str(tmp_path / "work16"))
    assert (f16.version, f16.tags[gguf_export.GGUF_TAG].split()[1]) == (ref.version, "outtype=f16")
    again = mlflow.artifacts.download_artifacts(
        artifact_uri="models:/tiny/1/model.gguf", dst_path=str(tmp_path / "dl16")
    )
    assert Path(again).read_bytes() == (tmp_path / "work16" / "model.gguf").read_bytes() != Path(local).read_bytes()


# --- vLLM-ready adapters, merged versions with template and EOS ---------------------------


def test_check_serving_passes_the_fine_tunes_merged_and_adapter_dirs(tiny_finetune):
    adapter, merged = tiny_finetune
    merged_report = serving_checks.check_dir(merged)
    assert (merged_report.kind, merged_report.problems) == ("merged", [])
    assert "generation EOS includes the end-of-turn token '<|im_end|>'" in merged_report.checked
    adapter_report = serving_checks.check_dir(adapter)
    assert (adapter_report.kind, adapter_report.problems) == ("adapter", [])
    assert "no modules_to_save" in adapter_report.checked


def test_check_serving_names_each_problem(tiny_finetune, tmp_path):
    adapter, merged = tiny_finetune
    bad_adapter = tmp_path / "adapter"
    shutil.copytree(adapter, bad_adapter)
    config = json.loads((bad_adapter / "adapter_config.json").read_text())
    (bad_adapter / "adapter_config.json").write_text(json.dumps({**config, "modules_to_save": ["lm_head"]}))
    for name in ("tokenizer_config.json", "chat_template.jinja", "tokenizer.json"):
        (bad_adapter / name).unlink(missing_ok=True)
    (bad_adapter / "training_args.bin").write_bytes(b"pickle")
    problems = serving_checks.check_dir(bad_adapter).problems
    assert [p.split(" ")[0] for p in problems] == ["modules_to_save", "pickle", "no"]

    bad_merged = tmp_path / "merged"
    shutil.copytree(merged, bad_merged)
    gen = json.loads((bad_merged / "generation_config.json").read_text())
    (bad_merged / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": 0}))
    (problem,) = serving_checks.check_dir(bad_merged).problems
    assert "lacks the chat template's end-of-turn token '<|im_end|>'" in problem


def test_merge_makes_the_end_of_turn_token_a_generation_eos(tiny_finetune, tiny_model, tmp_path):
    """A base whose generation EOS is not the template's end-of-turn: the merged model stops at both."""
    from peftflow.merge import merge

    adapter, _ = tiny_finetune
    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    gen = json.loads((base / "generation_config.json").read_text())
    (base / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": 0}))
    merged = merge(str(base), adapter, tmp_path / "merged", tolerance=1e-4)
    assert json.loads((tmp_path / "merged" / "generation_config.json").read_text())["eos_token_id"] == [0, 2]
    assert serving_checks.check_dir(merged.merged_dir).problems == []


def test_vllm_ready_refuses_before_training_and_at_publish(mlflow_home, tiny_finetune, tiny_model, tmp_path):
    from mlflow import MlflowClient

    with pytest.raises(ValueError, match="additional_target is saved as modules_to_save"):
        RunConfig(merge=False, additional_target="lm_head", registry={"vllm_ready": True})
    with pytest.raises(ValueError, match="not finetuning_type 'prefix'"):
        RunConfig(finetuning_type="prefix", registry={"vllm_ready": True})
    RunConfig(additional_target="lm_head", registry={"vllm_ready": True})  # merged: a standalone model

    adapter, _ = tiny_finetune
    bad = tmp_path / "adapter"
    shutil.copytree(adapter, bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**config, "modules_to_save": ["lm_head"]}))
    with pytest.raises(UserError, match=r"not servable by vLLM: modules_to_save \['lm_head'\]") as refused:
        publish_adapter(_run_id(), "tiny-lora", str(bad), tiny_model, LINEAGE, {}, for_vllm=True)
    assert "\n" not in str(refused.value)
    assert MlflowClient().search_registered_models() == []  # nothing registered

    ref = publish_adapter(_run_id(), "tiny-lora", adapter, tiny_model, LINEAGE, {}, for_vllm=True)
    assert ref.tags["peftflow.vllm_ready"] == "true"
    report = serving_checks.check_dir(download_model_dir("models:/tiny-lora@challenger"))
    assert (report.kind, report.problems) == ("adapter", [])


def test_adapter_version_answers_chat_requests_through_pyfunc(mlflow_home, tiny_finetune, tiny_model):
    """What `mlflow models serve` calls, in process: the adapter version is an llm/v1/chat model too."""
    import mlflow

    adapter, merged = tiny_finetune
    publish_adapter(_run_id(), "tiny-lora", adapter, tiny_model, LINEAGE, {})
    served = mlflow.pyfunc.load_model("models:/tiny-lora@challenger")
    messages = [{"role": "user", "content": PROBE_TEXTS[1]}]
    (answer,) = served.predict({"messages": messages, "max_tokens": 6})
    assert answer["object"] == "chat.completion"
    assert answer["usage"]["completion_tokens"] == 6
    assert answer["choices"][0]["message"]["content"] == _greedy_chat_reply(merged, messages, 6)


def _greedy_chat_reply(model_dir: str, messages: list[dict], max_new_tokens: int) -> str:
    """The reply transformers gives with the chat template applied (the merged model equals the
    adapter on its base up to float error)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True).strip()
