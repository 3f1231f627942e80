"""Vision-language models (LLaVA-style: vision tower, multimodal projector, language model).

transformers loads them as image-text-to-text models with a processor (tokenizer + image
processor). peftflow trains LoRA on the language model, the projector in full (peft
`modules_to_save`), and keeps the vision tower frozen; which module is which comes from PARTS.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

from peftflow.errors import UserError
from peftflow.methods import TRAITS, names_with

IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class Parts:
    vision_tower: str  # module name (any depth) of the image encoder
    projector: str  # module name of the image-to-text projector


# model_type -> its parts. A model type missing here is refused, not guessed at. A row fits a model
# whose processor writes the same number of image tokens for every image (data preparation counts
# them once); LLaVA-NeXT's any-resolution tiling does not.
PARTS: dict[str, Parts] = {
    "llava": Parts("vision_tower", "multi_modal_projector"),
}


def _config(model_path: str | Path) -> dict:
    path = Path(model_path) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def model_type(model_path: str | Path) -> str:
    return _config(model_path).get("model_type", "")


def is_vision_language(model_path: str | Path) -> bool:
    """A model with an image encoder: its config has a `vision_config`."""
    return "vision_config" in _config(model_path)


def parts_of(model_type: str) -> Parts:
    if model_type not in PARTS:
        raise UserError(
            f"vision-language model type '{model_type}' is not supported yet (supported: {', '.join(PARTS)})"
        )
    return PARTS[model_type]


def check_config_fits(cfg, model_path: str) -> None:
    """A config x model check: a vision-language model trains only with a method that can train one, merged, "
    "unquantised."""
    if not is_vision_language(model_path):
        return
    parts_of(model_type(model_path))  # a model type peftflow knows the parts of
    if not TRAITS[cfg.finetuning_type].vision_language:
        raise UserError(
            f"finetuning_type '{cfg.finetuning_type}' cannot train the vision-language model at {model_path} "
            f"(methods that can: {', '.join(names_with('vision_language'))})"
        )
    if cfg.merge is False:  # an adapter version reloads onto a causal-LM base; a VLM ships merged
        raise UserError(f"merge: false: the vision-language model at {model_path} is published merged; drop merge")
    if cfg.quantization_bit:
        raise UserError(
            f"quantization_bit: the vision-language model at {model_path} trains unquantised; drop quantization_bit"
        )


def model_class(model_path: str | Path):
    """The transformers auto class that loads this checkpoint with its generation head."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    return AutoModelForImageTextToText if is_vision_language(model_path) else AutoModelForCausalLM


def peft_scope(model, cfg) -> dict:
    """LoraConfig arguments that keep adapters out of the vision tower (unless
    `freeze_vision_tower: false`) and out of the projector, which trains in full instead."""
    parts = parts_of(model.config.model_type)
    excluded = [parts.projector] + ([parts.vision_tower] if cfg.freeze_vision_tower else [])
    return {
        "exclude_modules": rf".*\b({'|'.join(excluded)})\b.*",
        "modules_to_save": [parts.projector] if cfg.trains_projector else [],
    }


def trainable_by_part(model) -> dict[str, int]:
    """Trainable parameters per part: vision tower (adapters in it included), projector, LoRA on the
    language model, anything else."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    parts = parts_of(base.config.model_type)
    counts = {"vision_tower": 0, "projector": 0, "lora": 0, "other": 0}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = (
            "vision_tower"
            if f".{parts.vision_tower}." in name
            else "projector"
            if f".{parts.projector}." in name
            else "lora"
            if "lora_" in name
            else "other"
        )
        counts[part] += p.numel()
    return counts


def image_token(tokenizer) -> tuple[str, int]:
    """The placeholder token and its id; a vision-language tokenizer must encode it as one token."""
    text = getattr(tokenizer, "image_token", None) or IMAGE_TOKEN
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"tokenizer has no single {text} token")
    return text, ids[0]


def tokens_per_image(model_path: str | Path, trust_remote_code: bool = False) -> int:
    """How many placeholder tokens the processor writes for one image (what the model expects)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    text, token_id = image_token(processor.tokenizer)
    ids = processor(text=[text], images=[blank_image(processor)], return_tensors="pt")["input_ids"][0]
    return int((ids == token_id).sum())


def blank_image(processor):
    from PIL import Image

    size = getattr(processor.image_processor, "crop_size", None) or {"height": 32, "width": 32}
    return Image.new("RGB", (size["width"], size["height"]), "white")


def open_image(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def pixel_values(image_processor, images: list[list[bytes]]):
    """Pixel tensors for a batch: every row's images in order, concatenated (LLaVA's layout)."""
    flat = [open_image(b) for row in images for b in row]
    return image_processor(flat, return_tensors="pt")["pixel_values"] if flat else None


class VisionCollator:
    """Pads ids and labels like the text collator, and adds `pixel_values` from the rows' image bytes."""

    def __init__(self, text_collator, image_processor):
        self.text_collator, self.image_processor = text_collator, image_processor

    def __call__(self, rows: list[dict]):
        images = [r.pop("images") for r in rows]
        batch = self.text_collator(rows)
        pixels = pixel_values(self.image_processor, images)
        if pixels is not None:
            batch["pixel_values"] = pixels
        return batch
