"""End to end on the real model, SFT then DPO as a team runs them: `peftflow run` fine-tunes builtin
SmolLM2-135M-Instruct briefly on the order task as its annotators wrote it, the customer "Last, First"
(the convention the house style rejects), into a fresh MLflow; then `stage: dpo` starts from that
version (`models:/NAME@champion`) on the built-in pairs (house style "First Last" chosen, the name
reversed rejected). The DPO version records its SFT parent and its data, its run logged the preference
curves, on held-out pairs it prefers the chosen answers by a clear margin over its SFT parent, and the
registered model loads and answers in the house style.

(Twelve steps do not teach the SFT model the reversed convention outright: its customer field comes out
garbled ("Aiko Becker, 9 white chairs") and it still gives the house style the higher log-prob on most
held-out pairs, 0.92 of them in the run that set these numbers; DPO lifts that to every pair, with
margin ~3, and its answers to 1.0 `json_fields`. Short SFT on `demo_orders_mixed`, half its names
reversed, left the parent preferring the house style on 0.97 of the pairs: little for DPO to show.)

About 3 minutes on 2 CPU cores (175 s with a fresh PEFTFLOW_HOME, a 2-core machine with a nice'd
training beside it).
"""

from __future__ import annotations

import json

import pytest

from peftflow.builtin.datasets import INSTRUCTION, make_rows
from peftflow.builtin.preferences import reversed_name
from peftflow.mlflow_io.tracking import configure_mlflow
from tests.e2e.cli_env import cli_env, peftflow_run

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]

SFT, DPO = "e2e-orders-sft", "e2e-orders-dpo"
# Not in the pairs' exact wording; DPO's targeted property is the customer written "First Last".
MESSAGE = "Hi, this is Nora Silva. Please send three green mugs to Graz."

ALPACA = {
    "file_name": "orders_last_first.json",
    "formatting": "alpaca",
    "columns": {"prompt": "instruction", "query": "input", "response": "output"},
}
COMMON = """\
per_device_train_batch_size: 8
logging_steps: 2
save_steps: 100
evaluation:
  metric: json_fields
  max_samples: 4
  max_new_tokens: 40
"""
SFT_CONFIG = f"""\
model_name_or_path: builtin:smollm2-135m-instruct
dataset: orders_last_first
max_samples: 120
val_size: 8
max_steps: 12
learning_rate: 1.0e-3
registry:
  name: {SFT}
{COMMON}"""
DPO_CONFIG = f"""\
model_name_or_path: models:/{SFT}@champion
stage: dpo
dataset: demo_order_pairs
dataset_dir: builtin
pref_loss: sigmoid
pref_beta: 0.1
max_samples: 80
val_size: 16
max_steps: 8
learning_rate: 5.0e-4
registry:
  name: {DPO}
{COMMON}"""


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, peftflow_home):
    """SFT, then DPO from its champion, once for the module; returns what the tests need."""
    tmp = tmp_path_factory.mktemp("e2e-dpo")
    env = cli_env(tmp, peftflow_home)
    data = tmp / "data"
    data.mkdir()
    (data / "dataset_info.json").write_text(json.dumps({"orders_last_first": ALPACA}))
    rows = [r | {"output": reversed_name(r["output"])} for r in make_rows(120)]
    (data / ALPACA["file_name"]).write_text(json.dumps(rows))
    for name, text in (("sft", SFT_CONFIG + f"dataset_dir: {data}\n"), ("dpo", DPO_CONFIG)):
        (tmp / f"{name}.yaml").write_text(text + f"output_dir: {tmp / 'runs' / name}\n")
        peftflow_run(tmp / f"{name}.yaml", tmp, env, timeout=1200)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        configure_mlflow()  # earlier tests in this worker pointed MLflow's process-wide URIs elsewhere
        yield {"env": env, "tmp": tmp}


def _client(tuned):
    from mlflow import MlflowClient

    uri = tuned["env"]["MLFLOW_TRACKING_URI"]
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _only_version(client, name: str):
    (version,) = client.search_model_versions(f"name = '{name}'")
    return client.get_model_version(name, version.version)  # with its tags


def test_dpo_version_records_its_sft_parent_and_its_data(tuned):
    client = _client(tuned)
    sft, dpo = _only_version(client, SFT), _only_version(client, DPO)
    assert dpo.tags["stage"] == "dpo" and dpo.tags["pref_loss"] == "sigmoid"
    assert dpo.tags["parent_version"] == f"models:/{SFT}/{sft.version}"
    assert dpo.tags["base_model"] == f"models:/{SFT}@champion"
    assert len(dpo.tags["data_fingerprint"]) >= 8
    assert dpo.tags["data_fingerprint"] != sft.tags["data_fingerprint"]  # the pairs, not the SFT rows


def test_dpo_run_logged_the_preference_curves(tuned):
    client = _client(tuned)
    run_id = _only_version(client, DPO).run_id
    for key in ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected"):
        assert client.get_metric_history(run_id, key), key
    accuracies = [m.value for m in client.get_metric_history(run_id, "rewards/accuracies")]
    assert max(accuracies) > 0.5, accuracies  # the training pairs were being ranked, not tied


def _likelihood_accuracy(pairs: list[list[float]]) -> float:
    """The share of held-out pairs whose chosen side has the higher log-prob (eval_report.json rows:
    chosen sum, chosen tokens, rejected sum, rejected tokens)."""
    return sum(row[0] > row[2] for row in pairs) / len(pairs)


def test_dpo_prefers_the_chosen_answers_more_than_its_sft_parent(tuned):
    client = _client(tuned)
    run = client.get_run(_only_version(client, DPO).run_id)
    metrics = run.data.metrics
    accuracy, margin = metrics["eval.tuned.preference_accuracy"], metrics["eval.tuned.preference_margin"]
    # The SFT parent is the reference, so its own implicit rewards are 0 (no eval.base.preference_*):
    # what it prefers is the side it gives the higher log-prob, read from the run's eval_report.json.
    (report_path,) = (tuned["tmp"] / "runs" / "dpo").glob("*/eval_report.json")
    report = json.loads(report_path.read_text())["models"]
    base, mine = _likelihood_accuracy(report["base"]["pairs"]), _likelihood_accuracy(report["tuned"]["pairs"])
    # preference_margin is beta times how far DPO moved each pair's log-prob gap (chosen minus rejected)
    # past its parent's: > 1 is 10 nats on average at beta 0.1 (about 3 when these numbers were set).
    assert margin > 1.0, metrics
    assert accuracy >= 0.9, accuracy  # pairs moved towards the chosen side (1.0 when set)
    assert mine >= base and mine >= 0.9, (mine, base)  # the parent: 0.92, the tuned model 1.0 when set


def test_registered_dpo_model_loads_and_answers_in_the_house_style(tuned):
    import mlflow

    pipe = mlflow.transformers.load_model(f"models:/{DPO}/1")
    prompt = pipe.tokenizer.apply_chat_template(
        [{"role": "user", "content": f"{INSTRUCTION}\n{MESSAGE}"}], tokenize=False, add_generation_prompt=True
    )
    out = pipe(prompt, max_new_tokens=48, do_sample=False, return_full_text=False)[0]["generated_text"]
    try:
        got = json.loads(out.strip())
    except json.JSONDecodeError:
        pytest.fail(f"not JSON: {out!r}")
    assert got.get("customer") == "Nora Silva", got
