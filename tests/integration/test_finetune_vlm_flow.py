"""A vision-language model through the whole finetune flow: the summary and MLflow say which parts
trained, and the published version is a merged vision-language model."""

import json

import pytest
from mlflow import MlflowClient

from flows.finetune import finetune
from peftflow.builtin.shapes import write_shapes_dataset
from peftflow.mlflow_io.downloads import download_model_dir
from peftflow.models import vision
from peftflow.models.resolve import resolve_model
from tests.integration.conftest import tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("prefect")]


def test_vlm_trains_projector_and_lora_and_publishes_a_merged_model(harness, env, peftflow_home):
    root = env / "shapes"
    (root / "dataset_info.json").write_text(json.dumps(write_shapes_dataset(root, n=16)))
    cfg = tiny_config(
        resolve_model("builtin:tiny-llava").path,
        env,
        dataset="demo_shapes",
        dataset_dir=str(root),
        val_size=4,
        max_steps=2,
        registry={"name": "tiny-vlm"},
        evaluation={"metric": "answer_accuracy", "max_samples": 2, "max_new_tokens": 4, "batch_size": 2},
    )
    result = finetune(cfg)
    assert "trainable parameters: vision tower 0, projector " in result.summary
    assert {"base", "tuned"} <= set(result.scores)
    version = MlflowClient().get_model_version("tiny-vlm", result.version)
    assert version.tags["peftflow.kind"] == "merged"
    metrics = MlflowClient().get_run(result.run_id).data.metrics
    assert metrics["trainable_params.vision_tower"] == 0 and metrics["trainable_params.projector"] > 0
    downloaded = download_model_dir(f"models:/tiny-vlm/{result.version}")
    assert vision.is_vision_language(downloaded)
