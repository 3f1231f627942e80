"""Fixed inputs on which the merge check compares the adapter model with the merged one."""

from __future__ import annotations

import random

from peftflow.builtin.shapes import COLOURS, SHAPES, draw
from peftflow.models.vision import image_token

PROBE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Extract the order as JSON: Ship four red mugs to Oslo. Regards, Lena Novak.",
)


def probe_batch(tokenizer):
    """The probe texts as one padded batch of a text model's tokenizer."""
    return tokenizer(list(PROBE_TEXTS), return_tensors="pt", padding=True)


def image_probe_batch(processor):
    """Each probe text after an image placeholder, with a drawn image each (vision-language models)."""
    rng = random.Random(0)
    token = image_token(processor.tokenizer)[0]
    images = [draw(list(COLOURS)[i % len(COLOURS)], SHAPES[i % len(SHAPES)], rng) for i in range(len(PROBE_TEXTS))]
    return processor(text=[f"{token}{t}" for t in PROBE_TEXTS], images=images, padding=True, return_tensors="pt")
