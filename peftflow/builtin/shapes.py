"""The built-in image task: say which coloured shape a small picture shows ('a red circle').

Images and rows are generated deterministically from a seed into a LLaMA-Factory multimodal
sharegpt dataset: `messages` with an `<image>` placeholder and `images` paths relative to
dataset_dir. Held-out rows are new drawings (other sizes and positions) of the same kinds.
"""

from __future__ import annotations

import random
from pathlib import Path

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 170),
}
SHAPES = ("circle", "square", "triangle")
QUESTIONS = (
    "<image>What is in the picture?",
    "<image>Describe the image.",
    "<image>Which shape do you see?",
    "What does this show? <image>",
)
IMAGE_SIZE = 32
NAME = "demo_shapes"
ENTRY = {
    "file_name": f"{NAME}.json",
    "formatting": "sharegpt",
    "columns": {"messages": "messages", "images": "images"},
    "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
}


def draw(colour: str, shape: str, rng: random.Random, size: int = IMAGE_SIZE):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), "white")
    side = rng.randint(size // 2, size - 6)
    x, y = rng.randint(2, size - side - 2), rng.randint(2, size - side - 2)
    box = (x, y, x + side, y + side)
    pen = ImageDraw.Draw(image)
    fill = COLOURS[colour]
    if shape == "circle":
        pen.ellipse(box, fill=fill)
    elif shape == "square":
        pen.rectangle(box, fill=fill)
    else:
        pen.polygon([(x + side / 2, y), (x, y + side), (x + side, y + side)], fill=fill)
    return image


def caption(colour: str, shape: str) -> str:
    return f"a {colour} {shape}"


def write_shapes_dataset(dataset_dir: Path, n: int = 480, seed: int = 0) -> dict:
    """Write `n` images under dataset_dir/demo_shapes/ and the rows file; returns the dataset_info entry."""
    import json

    rng = random.Random(seed)
    (dataset_dir / NAME).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        rel = f"{NAME}/{i:04d}.png"
        draw(colour, shape, rng).save(dataset_dir / rel)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": rng.choice(QUESTIONS)},
                    {"role": "assistant", "content": caption(colour, shape)},
                ],
                "images": [rel],
            }
        )
    (dataset_dir / ENTRY["file_name"]).write_text(json.dumps(rows, indent=1))
    return {NAME: ENTRY}
