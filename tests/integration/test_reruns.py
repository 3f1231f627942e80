"""A rerun that changes only publishing, evaluation or promotion settings reuses the training and
applies the new settings; a registered model name comes from the run; an adapter champion is scored
on the base it was published with."""

import json

import pytest
from mlflow import MlflowClient

from flows.finetune import finetune
from peftflow.config.form import FLAT
from tests.integration.conftest import task_states, tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("prefect")]


def _version(name: str, version: str):
    return MlflowClient().get_model_version(name, version)


def test_rerun_with_new_publishing_evaluation_and_promotion_settings(harness, env, tiny_model):
    cfg = tiny_config(tiny_model, env, registry={"name": "tiny-rerun"})
    first = finetune(cfg)
    assert (first.version, first.champion) == ("1", "1")
    assert _version("tiny-rerun", "1").tags["peftflow.kind"] == "merged"

    # merge: false ships the adapter: a new version of that kind, the training reused.
    state = finetune(cfg.model_copy(update={"merge": False}), return_state=True)
    adapter = state.result()
    assert task_states(state.state_details.flow_run_id)["train-adapter"] == "Cached"
    assert adapter.version == "2" and _version("tiny-rerun", "2").tags["peftflow.kind"] == "adapter"
    assert "published as an adapter version" in adapter.summary and "models:/tiny-rerun/2" in adapter.summary

    # Another evaluation: scored again, and the same version carries the new scores.
    evaluation = cfg.evaluation.model_copy(update={"max_samples": 2})
    rescored = finetune(cfg.model_copy(update={"evaluation": evaluation}))
    assert rescored.version == "1"
    tags = _version("tiny-rerun", "1").tags
    report = json.loads(next((env / "runs").glob("*/eval_report.json")).read_text())
    assert len(report["models"]["tuned"]["examples"]) == 2
    assert float(tags["metric.tuned.perplexity"]) == pytest.approx(rescored.scores["tuned"]["perplexity"], rel=1e-5)

    # A stricter gate: the decision is made again (not cached), nothing else changes.
    strict = cfg.promotion.model_copy(update={"min_improvement": 1e9})
    gated = finetune(cfg.model_copy(update={"promotion": strict}))
    assert gated.version == "1" and not gated.promoted and "not promoted" in gated.summary
    assert len(MlflowClient().search_model_versions("name='tiny-rerun'")) == 2


def test_registered_name_comes_from_the_run_not_the_demo(harness, env, tiny_model):
    cfg = tiny_config(tiny_model, env)
    cfg = cfg.model_validate(
        {**cfg.model_dump(mode="json", context=FLAT), "registry": {"experiment": "peftflow"}, "output_dir": None}
    )
    assert cfg.registry.name == "tiny-random-demo_orders-lora"
    result = finetune(cfg)
    assert result.name == "tiny-random-demo_orders-lora" and "models:/tiny-random-demo_orders-lora/1" in result.summary
    assert not MlflowClient().search_registered_models("name='peftflow-demo'")


def test_an_adapter_champion_is_scored_on_its_own_base(harness, env, tiny_model, tmp_path):
    """Retraining on a new base: the champion (an adapter version) is scored on the base it was
    published with. Loaded onto the new base instead, its scores would be the new base's plus noise."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peftflow.mlflow_io.aliases import move_champion

    first = finetune(tiny_config(tiny_model, env, registry={"name": "tiny-newbase"}, finetuning_type="prefix"))
    move_champion("tiny-newbase", first.version, "the adapter serves", "test")  # whatever the gate said
    champion_perplexity = first.scores["tuned"]["perplexity"]
    new_base = tmp_path / "new-base"
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    for p in model.parameters():
        p.data.mul_(0.5)  # another base of the same shape
    model.save_pretrained(new_base)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(new_base)
    second = finetune(tiny_config(str(new_base), env, registry={"name": "tiny-newbase"}, finetuning_type="prefix"))
    assert second.scores["champion"]["perplexity"] == pytest.approx(champion_perplexity, rel=1e-4)
