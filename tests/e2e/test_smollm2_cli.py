"""End to end on the real model: `peftflow run` fine-tunes builtin SmolLM2-135M-Instruct on the
built-in order-extraction task (shortened), publishes it to a fresh MLflow, and the published,
merged and adapter forms all load and answer with the right JSON.

About 3 minutes on 2 CPU cores (plus ~15 s to convert the GGUF once per PEFTFLOW_HOME).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from peftflow.builtin.datasets import INSTRUCTION
from peftflow.mlflow_io.tracking import configure_mlflow
from tests.e2e.cli_env import cli_env, peftflow_run

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]

NAME = "e2e-orders"
STEPS = 16
# Not in the training data's exact wording; the quantity is a word, the answer must be a number.
MESSAGE = "Hi, this is Nora Silva. Please send three green mugs to Graz."
EXPECTED = {"customer": "Nora Silva", "item": "green mug", "quantity": 3, "city": "Graz"}
RESULT_LINE = re.compile(rf"^{NAME} v(\d+): (.*); champion -> v(\S+)$", re.MULTILINE)

CONFIG = f"""\
model_name_or_path: builtin:smollm2-135m-instruct
max_steps: {STEPS}
learning_rate: 1.0e-3
per_device_train_batch_size: 8
logging_steps: 4
save_steps: 8
val_size: 16
registry:
  name: {NAME}
evaluation:
  metric: json_fields
  max_samples: 16
  max_new_tokens: 40
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, peftflow_home):
    """Runs `peftflow run` once for the module; returns what the tests need."""
    tmp = tmp_path_factory.mktemp("e2e")
    out_dir = tmp / "runs"
    config = tmp / "e2e.yaml"
    config.write_text(CONFIG + f"output_dir: {out_dir}\n")
    env = cli_env(tmp, peftflow_home)
    proc, elapsed = peftflow_run(config, tmp, env)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        configure_mlflow()  # earlier tests in this worker pointed MLflow's process-wide URIs elsewhere
        yield {"proc": proc, "env": env, "tmp": tmp, "out_dir": out_dir, "elapsed": elapsed}


def _scores(text: str) -> dict[str, float]:
    return {k: float(v) for k, v in (pair.split("=") for pair in text.split())}


def _champion(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(NAME, "champion")


def test_run_publishes_a_champion_that_beats_the_base(trained):
    m = RESULT_LINE.search(trained["proc"].stdout)
    assert m, trained["proc"].stdout
    version, scores, champion = m[1], _scores(m[2]), m[3]
    assert (version, champion) == ("1", "1")
    assert scores["tuned"] > scores["base"], scores

    mv = _champion(trained["env"]["MLFLOW_TRACKING_URI"])
    assert str(mv.version) == "1"
    tuned, base = float(mv.tags["metric.tuned.score"]), float(mv.tags["metric.base.score"])
    assert tuned > base, (tuned, base)
    assert tuned >= 0.5, tuned  # learned the format, not just noise above a zero base
    assert mv.tags["base_model"] == "builtin:smollm2-135m-instruct"


def _parse_json(text: str) -> dict:
    try:
        got = json.loads(text.strip())
    except json.JSONDecodeError:
        pytest.fail(f"not JSON: {text!r}")
    assert isinstance(got, dict), text
    return got


def _check_fields(got: dict) -> None:
    assert got.get("customer") == EXPECTED["customer"], got
    assert got.get("city") == EXPECTED["city"], got


def test_registered_champion_loads_and_extracts(trained):
    import mlflow

    pipe = mlflow.transformers.load_model(f"models:/{NAME}@champion")
    prompt = pipe.tokenizer.apply_chat_template(
        [{"role": "user", "content": f"{INSTRUCTION}\n{MESSAGE}"}], tokenize=False, add_generation_prompt=True
    )
    out = pipe(prompt, max_new_tokens=48, do_sample=False, return_full_text=False)
    _check_fields(_parse_json(out[0]["generated_text"]))


def test_generate_command_answers_with_json(trained):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "generate",
            "--model",
            f"models:/{NAME}@champion",
            "--prompt",
            f"{INSTRUCTION}\n{MESSAGE}",
            "--max-new-tokens",
            "48",
        ],
        cwd=trained["tmp"],
        env=trained["env"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, proc.stdout
    _check_fields(_parse_json(lines[-1]))


def test_merged_and_adapter_dirs_load_with_plain_transformers_and_peft(trained):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peftflow.models.resolve import resolve_model

    key = _champion(trained["env"]["MLFLOW_TRACKING_URI"]).tags["train_key"]
    stage = trained["out_dir"] / key
    assert (stage / "merged").is_dir() and (stage / "adapter").is_dir(), list(trained["out_dir"].rglob("*"))[:50]

    tok = AutoTokenizer.from_pretrained(stage / "merged")
    text = tok.apply_chat_template(
        [{"role": "user", "content": f"{INSTRUCTION}\n{MESSAGE}"}], tokenize=False, add_generation_prompt=True
    )
    batch = tok(text, return_tensors="pt")

    merged = AutoModelForCausalLM.from_pretrained(stage / "merged").eval()
    base = AutoModelForCausalLM.from_pretrained(resolve_model("builtin:smollm2-135m-instruct").path)
    adapted = PeftModel.from_pretrained(base, stage / "adapter").eval()
    with torch.no_grad():
        a, b = merged(**batch).logits, adapted(**batch).logits
    assert torch.allclose(a, b, atol=1e-3), (a - b).abs().max()

    with torch.no_grad():
        ids = merged.generate(**batch, max_new_tokens=48, do_sample=False)
    answer = tok.decode(ids[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    _check_fields(_parse_json(answer))
