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

IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class Parts:
    vision_tower: str   # module name (any depth) of the image encoder
    projector: str      # module name of the image-to-text projector


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
    from peftflow.errors import UserError

    if model_type not in PARTS:
        raise UserError(f"vision-language model type '{model_type}' is not supported yet (supported: {', '.join(PARTS)})")
    return PARTS[model_type]


def model_class(model_path: str | Path):
    """The transformers auto class that loads this checkpoint with its generation head."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    return AutoModelForImageTextToText if is_vision_language(model_path) else AutoModelForCausalLM


def peft_scope(model, cfg) -> dict:
    """LoraConfig arguments that keep adapters out of the vision tower (unless
    `freeze_vision_tower: false`) and out of the projector, which trains in full instead."""
    parts = parts_of(model.config.model_type)
    excluded = [parts.projector] + ([parts.vision_tower] if cfg.freeze_vision_tower else [])
    return {"exclude_modules": rf".*\b({'|'.join(excluded)})\b.*",
            "modules_to_save": [parts.projector] if cfg.trains_projector else []}


def trainable_by_part(model) -> dict[str, int]:
    """Trainable parameters per part: vision tower (adapters in it included), projector, LoRA on the
    language model, anything else."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    parts = parts_of(base.config.model_type)
    counts = {"vision_tower": 0, "projector": 0, "lora": 0, "other": 0}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = ("vision_tower" if f".{parts.vision_tower}." in name else "projector" if f".{parts.projector}." in name
                else "lora" if "lora_" in name else "other")
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


def probe_batch(processor, texts: tuple[str, ...]):
    """Texts, each after an image placeholder, with a drawn image each: what the merge check compares."""
    import random

    from peftflow.data.shapes import COLOURS, SHAPES, draw

    rng = random.Random(0)
    token = image_token(processor.tokenizer)[0]
    images = [draw(list(COLOURS)[i % len(COLOURS)], SHAPES[i % len(SHAPES)], rng) for i in range(len(texts))]
    return processor(text=[f"{token}{t}" for t in texts], images=images, padding=True, return_tensors="pt")


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


def build_llava(out: Path, language_model_dir: Path, seed: int = 0, image_size: int = 32, patch_size: int = 8) -> None:
    """A LLaVA model: a small random CLIP vision tower, a random projector and the (random or
    pretrained) language model at `language_model_dir`, with an `<image>` token added to its
    tokenizer. Deterministic for a seed."""
    import torch
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, CLIPVisionConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = AutoTokenizer.from_pretrained(language_model_dir)
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    text_config = AutoConfig.from_pretrained(language_model_dir)
    torch.manual_seed(seed)
    language = AutoModelForCausalLM.from_pretrained(language_model_dir, dtype=torch.float32)
    language.resize_token_embeddings(len(tok), mean_resizing=False)
    text_config.vocab_size = len(tok)
    vision_config = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                     image_size=image_size, patch_size=patch_size, projection_dim=64)
    config = LlavaConfig(vision_config=vision_config, text_config=text_config,
                         image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                         image_seq_length=(image_size // patch_size) ** 2, vision_feature_select_strategy="default",
                         vision_feature_layer=-1, tie_word_embeddings=text_config.tie_word_embeddings)
    model = LlavaForConditionalGeneration(config)
    model.model.language_model.load_state_dict(language.model.state_dict())
    model.lm_head.load_state_dict(language.lm_head.state_dict())
    model.generation_config = language.generation_config
    model.save_pretrained(out, safe_serialization=True)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
    LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch_size,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=tok.chat_template).save_pretrained(out)
