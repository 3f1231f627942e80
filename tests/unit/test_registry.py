"""peftflow.registry against a real MLflow (sqlite in tmp_path) and the tiny random model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from peftflow.config import RunConfig
from peftflow.inference import generate_reply
from peftflow.mlflow_io.aliases import alias_history, set_alias
from peftflow.mlflow_io.downloads import download_model_dir, load_pipeline
from peftflow.mlflow_io.publishing import describe, publish_adapter, publish_model
from peftflow.mlflow_io.tracking import (
    config_params,
    configure_mlflow,
    ensure_experiment,
    finish_run,
    log_artifact,
    log_metrics,
    start_run,
)
from peftflow.mlflow_io.versions import get_version_by_alias
from peftflow.promotion import GateDecision, decide_promotion, promote


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    """builtin:tiny-random, built once per session in its own PEFTFLOW_HOME."""
    from peftflow.models.resolve import resolve_model

    home = tmp_path_factory.mktemp("model-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PEFTFLOW_HOME", str(home))
        return resolve_model("builtin:tiny-random").path


LINEAGE = {
    "base_model": "builtin:tiny-random",
    "base_model_fingerprint": "abc",
    "data_fingerprint": "def",
    "method": "lora",
    "prefect_flow_run_id": "flow-1",
    "code_version": "0.1.0",
    "config_fingerprint": "123",
}


def _cfg(**kw) -> RunConfig:
    return RunConfig(registry={"name": "tiny", "experiment": "exp"}, **kw)


# --- tracking -------------------------------------------------------------------------------


def test_configure_mlflow_defaults_to_sqlite_in_home_and_honours_env(mlflow_home, monkeypatch, tmp_path):
    import mlflow

    assert configure_mlflow() == f"sqlite:///{mlflow_home.resolve()}/mlflow.db"
    assert configure_mlflow() == mlflow.get_tracking_uri() == mlflow.get_registry_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/other.db")
    assert configure_mlflow() == f"sqlite:///{tmp_path}/other.db" == mlflow.get_tracking_uri()
    # MLflow copies what it is given into os.environ; configure_mlflow puts the user's values back,
    # so a later call with another home (or none of these variables) is not steered by this one.
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path}/other.db"
    assert "MLFLOW_REGISTRY_URI" not in os.environ
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("PEFTFLOW_HOME", str(tmp_path / "second-home"))
    assert configure_mlflow() == f"sqlite:///{(tmp_path / 'second-home').resolve()}/mlflow.db"
    assert mlflow.get_registry_uri() == mlflow.get_tracking_uri() and "MLFLOW_TRACKING_URI" not in os.environ


def test_ensure_experiment_puts_artifacts_under_home(mlflow_home):
    from mlflow import MlflowClient

    exp_id = ensure_experiment("exp")
    assert ensure_experiment("exp") == exp_id
    exp = MlflowClient().get_experiment(exp_id)
    assert exp.artifact_location == (mlflow_home.resolve() / "mlartifacts").as_uri()
    # the UI opens it in the training view, not the GenAI one
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    # an older experiment whose kind MLflow's UI only inferred is moved to it; one a person chose stays
    client = MlflowClient()
    inferred = client.create_experiment("old", tags={"mlflow.experimentKind": "genai_development_inferred"})
    chosen = client.create_experiment("chosen", tags={"mlflow.experimentKind": "genai_development"})
    ensure_experiment("old"), ensure_experiment("chosen")
    assert client.get_experiment(inferred).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"


def test_start_run_logs_flat_params_with_secrets_masked(mlflow_home):
    from mlflow import MlflowClient

    class WithSecrets(RunConfig):
        hub_token: str = "hf_verysecret"
        aws_secret_access_key: str = "AKIA..."
        api_key: str | None = None

    cfg = WithSecrets(
        registry={"name": "tiny", "experiment": "exp"}, lora_target="q_proj,v_proj", promotion={"min_improvement": 0.05}
    )
    run_id = start_run(cfg, {"peftflow.flow_run_id": "flow-1"})
    run = MlflowClient().get_run(run_id)
    params = run.data.params
    assert params["promotion.min_improvement"] == "0.05"
    assert params["registry.experiment"] == "exp"
    assert params["lora_target"] == "q_proj,v_proj"
    assert params["evaluation.max_new_tokens"] == "64"  # "tokens" is not a secret
    assert params["hub_token"] == params["aws_secret_access_key"] == "***"
    assert params["api_key"] == "None"  # nothing to hide
    assert "hf_verysecret" not in json.dumps(params)
    assert run.data.tags["peftflow.flow_run_id"] == "flow-1"
    assert run.info.status == "RUNNING"
    assert MlflowClient().get_experiment(run.info.experiment_id).name == "exp"

    # a training run: named for its registered model and train key, the key under one tag name
    keyed = start_run(cfg, {"train_key": "k1"}, train_key="k1")
    run = MlflowClient().get_run(keyed)
    assert run.info.run_name == "tiny-k1"
    assert run.data.tags["train_key"] == "k1" and not [t for t in run.data.tags if t.endswith(".train_key")]
    assert start_run(cfg, {"train_key": "k1"}, train_key="k1") == keyed  # a rerun finds it by that tag


def test_log_metrics_artifacts_and_finish(mlflow_home, tmp_path):
    from mlflow import MlflowClient

    run_id = start_run(_cfg(), {})
    log_metrics(run_id, {"loss": 1.5, "eval/perplexity": 4}, step=3)
    log_metrics(run_id, {"loss": 1.2}, step=4)
    report = tmp_path / "report.json"
    report.write_text("{}")
    adapter = tmp_path / "adapter"
    (adapter / "sub").mkdir(parents=True)
    (adapter / "sub" / "a.txt").write_text("x")
    log_artifact(run_id, str(report), "reports")
    log_artifact(run_id, str(adapter))
    finish_run(run_id)

    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"loss": 1.2, "eval/perplexity": 4.0}
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(3, 1.5), (4, 1.2)]
    assert {a.path for a in client.list_artifacts(run_id)} == {"reports", "adapter"}
    assert [a.path for a in client.list_artifacts(run_id, "adapter/sub")] == ["adapter/sub/a.txt"]


# --- publishing -----------------------------------------------------------------------------


def test_publish_model_registers_challenger_loads_and_is_idempotent(mlflow_home, tiny_dir, tmp_path):
    import mlflow
    from mlflow import MlflowClient
    from safetensors.torch import load_file

    run_id = start_run(_cfg(), {})
    about = {"recipe": config_params(_cfg(dataset="demo_orders")), "description": "The tiny test model."}
    ref = publish_model(run_id, "tiny", tiny_dir, LINEAGE, {"score": 0.5, "perplexity": 12.25}, **about)

    assert (ref.name, ref.version, ref.run_id, ref.uri) == ("tiny", "1", run_id, "models:/tiny/1")
    assert {k: ref.tags[k] for k in LINEAGE} == LINEAGE
    assert ref.tags["metric.score"] == "0.5" and ref.tags["metric.perplexity"] == "12.25"
    assert get_version_by_alias("tiny", "challenger") == ref
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "RUNNING"  # publishing does not end the run

    # the artifact sits in the run's experiment, under <home>/mlartifacts; nothing in ./mlruns
    assert list((mlflow_home / "mlartifacts" / "models").glob("m-*/artifacts/MLmodel"))
    assert not (tmp_path / "mlruns").exists()

    # a retry of the same publish returns the same version and logs nothing new
    again = publish_model(run_id, "tiny", tiny_dir, LINEAGE, {"score": 0.5, "perplexity": 12.25}, **about)
    assert again.version == "1"
    assert len(client.search_model_versions("name='tiny'")) == 1
    assert len(client.get_run(run_id).outputs.model_outputs) == 1
    # ...nor a second, identical challenger history entry
    assert [h["reason"] for h in alias_history("tiny", "1", "challenger")] == [f"published from run {run_id}"]

    # MLflow's pages explain the version: the logged model lists it (as MLflow's own registration
    # links them), with the recipe as params and the held-out dataset its scores were measured on
    mv = client.get_model_version("tiny", "1")
    (logged,) = client.search_logged_models(experiment_ids=[client.get_run(run_id).info.experiment_id])
    assert mv.source == f"models:/{logged.model_id}" and mv.model_id in (None, logged.model_id)  # sqlite: None
    assert json.loads(client.get_logged_model(logged.model_id).tags["mlflow.modelVersions"]) == [
        {"name": "tiny", "version": 1}
    ]  # as MLflow writes it
    assert logged.params["finetuning_type"] == "lora" and logged.params["dataset"] == "demo_orders"
    assert {(m.key, m.dataset_name, m.dataset_digest) for m in logged.metrics} == {
        ("eval.score", "demo_orders", "def"),
        ("eval.perplexity", "demo_orders", "def"),
    }
    # descriptions: the registered model's from the config, the version's its model card
    assert client.get_registered_model("tiny").description == "The tiny test model."
    card = mv.description
    assert card.startswith("# Model card: tiny") and "| score | 0.5 |" in card and "- finetuning_type: `lora`" in card
    assert "- data_fingerprint: `def`" in card and 'load_model("models:/tiny/1")' in card
    (licence,) = (mlflow_home / "mlartifacts" / "models").glob("m-*/artifacts/LICENSE.txt")
    assert "huggingface.co" not in licence.read_text() and "builtin:tiny-random" in licence.read_text()
    # the flow's summary on top, as the run's and the version's description (again: replaced, not added)
    describe(ref, "# Fine-tune `tiny` version 1\n\n**Promotion gate:** promoted")
    describe(ref, "# Fine-tune `tiny` version 1\n\n**Promotion gate:** not promoted")
    assert client.get_run(run_id).data.tags["mlflow.note.content"].endswith("not promoted")
    described = client.get_model_version("tiny", "1").description
    assert described.startswith("# Fine-tune `tiny` version 1\n\n**Promotion gate:** not promoted\n\n# Model card:")
    assert described.count("# Model card:") == 1 and described.endswith(card)

    pipe = mlflow.transformers.load_model("models:/tiny@challenger")
    out = pipe("Hello", max_new_tokens=4, do_sample=False)
    assert isinstance(out[0]["generated_text"], str)
    assert pipe.tokenizer.chat_template  # the chat template travelled with the tokenizer
    saved = load_file(str(Path(tiny_dir) / "model.safetensors"))
    state = pipe.model.state_dict()
    assert saved and all(torch.equal(state[k], v) for k, v in saved.items())

    # what `peftflow generate` loads once the gate has passed
    gate = decide_promotion("score", 0.5, 0.1, "base model", 0.0)
    assert promote("tiny", ref.version, gate, actor="test") == "1"
    champion = load_pipeline("models:/tiny@champion")
    assert isinstance(champion("Hi", max_new_tokens=2, do_sample=False)[0]["generated_text"], str)
    assert isinstance(generate_reply("models:/tiny@champion", "Hi", max_new_tokens=3), str)
    assert isinstance(generate_reply(tiny_dir, "Hi", max_new_tokens=3), str)

    # the champion as a plain from_pretrained dir (for evaluation), cached per version
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = download_model_dir("models:/tiny@champion")
    assert download_model_dir("models:/tiny/1") == local
    reloaded = AutoModelForCausalLM.from_pretrained(local).state_dict()
    assert all(torch.equal(reloaded[k], v) for k, v in saved.items())
    assert AutoTokenizer.from_pretrained(local).chat_template
    with pytest.raises(LookupError):
        download_model_dir("models:/tiny@nope")

    # A reference to no fixed version is fetched again each time, into one slot per resolved model,
    # and leaves no temporary directory behind.
    from peftflow.paths import cache_dir

    latest = download_model_dir("models:/tiny/latest")
    assert download_model_dir("models:/tiny/latest") == latest != local
    assert AutoModelForCausalLM.from_pretrained(latest).state_dict().keys() == reloaded.keys()
    leftovers = [p.name for p in cache_dir("registry").iterdir() if p.is_dir() and p.name.startswith(".")]
    assert (
        not leftovers
        and len([p for p in cache_dir("registry").iterdir() if p.name.startswith("unpinned-") and p.is_dir()]) == 1
    )


def test_publish_retry_after_logging_reuses_the_logged_model(mlflow_home, tiny_dir, monkeypatch):
    """A publish that died after log_model but before registering does not log the model twice."""
    from mlflow import MlflowClient

    run_id = start_run(_cfg(), {})
    real = MlflowClient._create_model_version  # what mlflow.register_model calls

    def crash(*a, **kw):
        raise RuntimeError("registry down")

    monkeypatch.setattr(MlflowClient, "_create_model_version", crash)
    with pytest.raises(RuntimeError):
        publish_model(run_id, "tiny", tiny_dir, LINEAGE, {})
    monkeypatch.setattr(MlflowClient, "_create_model_version", real)
    ref = publish_model(run_id, "tiny", tiny_dir, LINEAGE, {})
    assert ref.version == "1"
    assert len(MlflowClient().get_run(run_id).outputs.model_outputs) == 1


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_publish_adapter_reloads_with_the_real_base_weights(mlflow_home, tiny_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    # init_lora_weights=False: lora_B is non-zero, so the adapter really changes the logits
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")

    run_id = start_run(_cfg(), {})
    ref = publish_adapter(run_id, "tiny-adapter", str(tmp_path / "adapter"), tiny_dir, LINEAGE, {"score": 0.1})
    assert ref.tags["peftflow.kind"] == "adapter"
    assert ref.tags["base_model_path"] == str(Path(tiny_dir).resolve())
    again = publish_adapter(run_id, "tiny-adapter", str(tmp_path / "adapter"), tiny_dir, LINEAGE, {"score": 0.1})
    assert again.version == ref.version == "1"

    pipe = load_pipeline("models:/tiny-adapter@challenger")
    ids = AutoTokenizer.from_pretrained(tiny_dir)("hello world", return_tensors="pt").input_ids
    expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), tmp_path / "adapter")
    with torch.no_grad():
        want = expected(ids).logits
        got = pipe.model(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_dir)(ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # the adapter is applied, not dropped

    local = download_model_dir(ref.uri)  # adapter + tokenizer; transformers adds the base
    with torch.no_grad():
        assert torch.allclose(AutoModelForCausalLM.from_pretrained(local)(ids).logits, want, atol=1e-5)


# --- aliases and the gate -------------------------------------------------------------------


def _versions(name: str, n: int, tmp_path) -> list[str]:
    """Registered versions without real models: aliases and promotion only need version rows."""
    from mlflow import MlflowClient

    client = MlflowClient()
    client.create_registered_model(name)
    return [str(client.create_model_version(name, source=(tmp_path / f"v{i}").as_uri()).version) for i in range(n)]


def test_get_version_by_alias_missing_is_none(mlflow_home, tmp_path):
    assert get_version_by_alias("nope", "champion") is None
    _versions("m", 1, tmp_path)
    assert get_version_by_alias("m", "champion") is None


def test_set_alias_records_history(mlflow_home, tmp_path):
    _versions("m", 1, tmp_path)
    set_alias("m", "champion", "1", reason="first", actor="alice")
    set_alias("m", "champion", "1", reason="again", actor="bob")
    history = alias_history("m", "1", "champion")
    assert [(h["by"], h["reason"]) for h in history] == [("alice", "first"), ("bob", "again")]
    assert get_version_by_alias("m", "champion").version == "1"


def test_promote_moves_champion_and_keeps_previous(mlflow_home, tmp_path):
    _versions("m", 3, tmp_path)
    yes = decide_promotion("score", 0.6, 0.5, "base model", 0.0)
    no = decide_promotion("score", 0.4, 0.5, "champion v1", 0.0)

    assert promote("m", "1", yes, actor="flow") == "1"
    assert get_version_by_alias("m", "previous") is None
    assert promote("m", "1", yes, actor="flow") == "1"  # already champion: no change
    assert get_version_by_alias("m", "previous") is None

    assert promote("m", "2", no, actor="flow") is None  # gate refused: nothing moves
    assert get_version_by_alias("m", "champion").version == "1"

    assert promote("m", "3", yes, actor="flow") == "3"
    assert get_version_by_alias("m", "champion").version == "3"
    assert get_version_by_alias("m", "previous").version == "1"
    assert alias_history("m", "3", "champion")[-1]["reason"] == yes.reason
    assert alias_history("m", "1", "previous")[-1]["reason"] == "replaced as champion by v3"


@pytest.mark.parametrize(
    "candidate, incumbent, margin, higher, promote, words",
    [
        (0.82, 0.61, 0.0, True, True, "beats champion v3 (0.6100) by 0.2100 >= 0.0000"),
        (0.61, 0.61, 0.0, True, False, "ties"),  # a tie keeps the champion
        (0.61, 0.61, -0.01, True, True, "within the allowed 0.0100"),  # negative margin tolerates
        (0.65, 0.61, 0.05, True, False, "by only 0.0400 < 0.0500"),
        (0.71, 0.50, 0.21, True, True, "by 0.2100 >= 0.2100"),  # float noise forgiven
        (0.50, 0.61, 0.0, True, False, "worse than"),
        (9.0, 12.0, 1.0, False, True, "lower is better"),  # perplexity
        (12.5, 12.0, 0.0, False, False, "worse than"),
        (float("nan"), 0.5, 0.0, True, False, "not a number"),
        (0.3, None, 0.0, True, True, "no score to beat"),
        (0.3, float("nan"), 0.0, True, True, "no score to beat"),
    ],
)
def test_decide_promotion(candidate, incumbent, margin, higher, promote, words):
    d = decide_promotion("score", candidate, incumbent, "champion v3", margin, higher_is_better=higher)
    assert isinstance(d, GateDecision)
    assert d.promote is promote
    assert words in d.reason, d.reason
    assert "\n" not in d.reason
