"""Vision-language models on builtin:tiny-llava: multimodal data, frozen vision tower, trained
projector and LoRA, merge, evaluation and a registry version that answers about an image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peftflow import merge
from peftflow.builtin.shapes import write_shapes_dataset
from peftflow.config import RunConfig
from peftflow.data import prepare_dataset
from peftflow.errors import UserError
from peftflow.evaluation.metrics import METRICS
from peftflow.evaluation.scoring import compare
from peftflow.inference import generate_image_reply, generate_reply
from peftflow.mlflow_io.downloads import download_model_dir
from peftflow.mlflow_io.publishing import publish_model
from peftflow.mlflow_io.tracking import configure_mlflow, start_run
from peftflow.models import vision
from peftflow.training.run import run as train_run


@pytest.fixture(scope="session")
def tiny_llava(peftflow_home) -> str:
    from peftflow.models.resolve import resolve_model

    return resolve_model("builtin:tiny-llava").path


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    info = write_shapes_dataset(root, n=24)
    (root / "dataset_info.json").write_text(json.dumps(info))
    return root


def _cfg(model: str, root: Path, **kw) -> RunConfig:
    return RunConfig(
        **{
            "model_name_or_path": model,
            "dataset": "demo_shapes",
            "dataset_dir": str(root),
            "val_size": 4,
            "max_steps": 4,
            "learning_rate": 1e-2,
            "logging_steps": 2,
            "save_steps": 4,
            "per_device_train_batch_size": 4,
            "evaluation": {"metric": "answer_accuracy", "max_samples": 4, "max_new_tokens": 4},
            **kw,
        }
    )


@pytest.fixture(scope="module")
def trained(tiny_llava, shapes_dir, tmp_path_factory):
    cfg = _cfg(tiny_llava, shapes_dir)
    data = prepare_dataset(cfg, tiny_llava)
    out = tmp_path_factory.mktemp("vlm-run")
    result = train_run(cfg, tiny_llava, data.path, out)
    merged = merge.merge(tiny_llava, result.adapter_dir, out / "merged", tolerance=1e-4)
    return cfg, data, result, merged


def _weights(model_dir: str) -> dict[str, torch.Tensor]:
    return {k: v for f in Path(model_dir).glob("*.safetensors") for k, v in load_file(f).items()}


def test_prepared_rows_carry_images_and_one_placeholder_token_per_feature(trained, tiny_llava):
    _, data, _, _ = trained
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    row = load_from_disk(f"{data.path}/eval")[0]
    image_id = vision.image_token(AutoTokenizer.from_pretrained(tiny_llava))[1]
    assert len(row["images"]) == 1 and row["images"][0].startswith(b"\x89PNG")
    assert row["prompt_ids"].count(image_id) == vision.tokens_per_image(tiny_llava) == 16
    assert all(label == -100 for tok, label in zip(row["input_ids"], row["labels"]) if tok == image_id)


def test_only_projector_and_language_model_adapters_train(trained):
    _, _, result, _ = trained
    parts = result.trainable_by_part
    assert parts["vision_tower"] == 0 and parts["projector"] > 0 and parts["lora"] > 0 and parts["other"] == 0
    assert result.trainable_params == parts["projector"] + parts["lora"]
    adapter = load_file(Path(result.adapter_dir) / "adapter_model.safetensors")
    assert not [k for k in adapter if "vision_tower" in k]
    assert [k for k in adapter if "multi_modal_projector" in k]
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all("language_model" in k for k in adapter if "lora_" in k)
    assert any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: training moved it


def test_merge_keeps_vision_tower_bit_identical_and_changes_projector_and_language_model(trained, tiny_llava):
    _, _, _, merged = trained
    assert merged.passed
    base, after = _weights(tiny_llava), _weights(merged.merged_dir)
    assert set(base) == set(after)
    tower = [k for k in base if "vision_tower" in k.split(".")]
    assert tower and all(torch.equal(base[k], after[k]) for k in tower)
    assert any(not torch.equal(base[k], after[k]) for k in base if "multi_modal_projector" in k.split("."))
    assert any(not torch.equal(base[k], after[k]) for k in base if "layers" in k.split(".") and "language_model" in k)
    assert (Path(merged.merged_dir) / "processor_config.json").is_file()


def test_freeze_vision_tower_false_puts_adapters_into_it(tiny_llava):
    from transformers import AutoModelForImageTextToText

    from peftflow.methods import get_method

    # LLaMA-Factory's freeze_multi_modal_projector: true is train_projector: false.
    cfg = RunConfig(model_name_or_path=tiny_llava, freeze_vision_tower=False, freeze_multi_modal_projector=True)
    model = get_method(cfg).build(AutoModelForImageTextToText.from_pretrained(tiny_llava), cfg)
    parts = vision.trainable_by_part(model)
    assert parts["vision_tower"] > 0 and parts["projector"] == 0 and parts["lora"] > 0


def test_evaluation_scores_answers_on_heldout_images(trained, tiny_llava, tmp_path):
    cfg, data, _, merged = trained
    report = compare({"base": tiny_llava, "tuned": merged.merged_dir}, data.path, cfg, tmp_path / "r.json")
    for scores in report.models.values():
        assert len(scores.examples) == 4 and scores.loss > 0
        assert all(e["reference"].startswith("a ") for e in scores.examples)
    # Same held-out rows, different weights: the fine-tune's loss moved.
    assert report.models["tuned"].loss != report.models["base"].loss


@pytest.mark.parametrize(
    "metric, pred, ref, expected",
    [
        ("answer_accuracy", "A red circle.", "a red circle", 1.0),
        ("answer_accuracy", "a red square", "a red circle", 0.0),
    ],
)
def test_answer_accuracy(metric, pred, ref, expected):
    assert METRICS[metric](pred, ref) == expected


def test_registry_version_reloads_and_answers_about_an_image(trained, shapes_dir, tmp_path, monkeypatch):
    _, _, _, merged = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    configure_mlflow()
    run_id = start_run(RunConfig(registry={"name": "tiny-vlm", "experiment": "vlm"}), tags={})
    version = publish_model(run_id, "tiny-vlm", merged.merged_dir, {"method": "lora"}, {})
    image = str(shapes_dir / "demo_shapes" / "0000.png")
    reply = generate_reply(version.uri, "What is in the picture?", max_new_tokens=6, image=image)
    local = generate_image_reply(merged.merged_dir, "What is in the picture?", image, max_new_tokens=6)
    assert reply and reply == local
    downloaded = download_model_dir(version.uri)
    assert vision.is_vision_language(downloaded) and vision.tokens_per_image(downloaded) == 16


def _bad_dataset(root: Path, rows: list[dict]) -> Path:
    (root / "dataset_info.json").write_text(
        json.dumps(
            {
                "pics": {
                    "file_name": "pics.json",
                    "formatting": "sharegpt",
                    "columns": {"messages": "messages", "images": "images"},
                    "tags": {
                        "role_tag": "role",
                        "content_tag": "content",
                        "user_tag": "user",
                        "assistant_tag": "assistant",
                    },
                }
            }
        )
    )
    (root / "pics.json").write_text(json.dumps(rows))
    return root


def _row(content: str, images: list[str]) -> dict:
    return {
        "messages": [{"role": "user", "content": content}, {"role": "assistant", "content": "a red circle"}],
        "images": images,
    }


@pytest.mark.parametrize(
    "row, expected",
    [
        (_row("<image>What is it?", ["missing.png"]), "row 2: image file not found (missing.png in"),
        (
            _row("<image><image>What is it?", ["demo_shapes/0000.png"]),
            "row 2: image placeholders do not match images (2 <image> in the messages, 1 in 'images')",
        ),
        (
            _row("What is it?", ["demo_shapes/0000.png"]),
            "row 2: image placeholders do not match images (0 <image> in the messages, 1 in 'images')",
        ),
        (_row("<image>What is it?", ["pics.json"]), "row 2: not a readable image (pics.json)"),
    ],
    ids=["missing-file", "two-placeholders", "no-placeholder", "not-an-image"],
)
def test_bad_image_rows_name_file_and_row(tiny_llava, shapes_dir, tmp_path, row, expected):
    root = tmp_path
    (root / "demo_shapes").mkdir()
    (root / "demo_shapes" / "0000.png").write_bytes((shapes_dir / "demo_shapes" / "0000.png").read_bytes())
    _bad_dataset(root, [_row("<image>What is it?", ["demo_shapes/0000.png"]), row])
    with pytest.raises(UserError) as caught:
        prepare_dataset(RunConfig(dataset="pics", dataset_dir=str(root), val_size=0), tiny_llava)
    message = str(caught.value)
    assert message.startswith(f"{root}/pics.json: 1 invalid rows: ") and expected in message and "\n" not in message


def test_images_need_a_vlm_and_a_vlm_needs_lora_merged_unquantised(tiny_model, tiny_llava, shapes_dir):
    with pytest.raises(UserError, match="has images but the model at .* is not a vision-language model"):
        prepare_dataset(_cfg(tiny_model, shapes_dir), tiny_model)
    with pytest.raises(UserError, match="finetuning_type 'prefix' cannot train the vision-language model"):
        prepare_dataset(_cfg(tiny_llava, shapes_dir, finetuning_type="prefix"), tiny_llava)
    with pytest.raises(UserError, match="merge: false: the vision-language model at .* is published merged"):
        prepare_dataset(_cfg(tiny_llava, shapes_dir, merge=False), tiny_llava)
    with pytest.raises(UserError, match="quantization_bit: the vision-language model at .* trains unquantised"):
        prepare_dataset(_cfg(tiny_llava, shapes_dir, quantization_bit=4), tiny_llava)


def test_gguf_export_of_a_vision_language_run_is_refused_before_training(tiny_llava, shapes_dir):
    from peftflow.errors import UserError
    from peftflow.preflight import check_training_setup

    with pytest.raises(UserError, match="registry.gguf_outtype: the model at .* is vision-language"):
        check_training_setup(_cfg(tiny_llava, shapes_dir, registry={"gguf_outtype": "f16"}), tiny_llava)
