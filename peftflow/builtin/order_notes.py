"""The built-in plain-text dataset for continued pre-training (`stage: pt`): `demo_order_notes`, the
notes a shop's staff write about orders (who ordered what, where it ships, how it goes out), made
from the order task's names, items and cities (datasets.py) and a seed. Text of the domain with no
instruction or answer, as LLaMA-Factory's `c4_demo` is: a JSON Lines file read through the `prompt`
column."""

from __future__ import annotations

import json
import random
from pathlib import Path

from peftflow.builtin.datasets import CITIES, COLORS, FIRST, ITEMS, LAST, NUMBER_WORDS

NOTES_SEED = 31  # apart from the order rows' seeds
OPENINGS = [
    "{customer} ordered {qty} {item}s for delivery to {city}.",
    "Order note: {qty} {item}s for {customer}, shipping to {city}.",
    "{customer} called about an order of {qty} {item}s going to {city}.",
    "New order from {customer}: {qty} {item}s, destination {city}.",
]
DETAILS = [
    "The {item}s are packed two to a box with paper filling.",
    "Stock of {item}s in the {city} warehouse is low, so the order ships from the main store.",
    "The customer asked for the parcel to be left with a neighbour.",
    "Payment was received on the same day.",
    "Delivery to {city} usually takes {days} working days.",
    "A gift note was added at the customer's request.",
    "The courier picks up parcels for {city} every morning.",
    "{customer} has ordered from the shop before.",
]
CLOSINGS = [
    "Status: packed.",
    "Status: shipped, tracking sent to the customer.",
    "Status: waiting for stock.",
    "Status: delivered.",
]
DATASET_INFO = {"demo_order_notes": {"file_name": "demo_order_notes.jsonl", "columns": {"prompt": "text"}}}


def make_notes(n: int, seed: int = NOTES_SEED) -> list[dict]:
    """`n` rows {"text": a note of four or five sentences}."""
    rng = random.Random(seed)
    notes = []
    for _ in range(n):
        quantity = rng.randint(2, 9)
        slots = {
            "customer": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
            "item": f"{rng.choice(COLORS)} {rng.choice(ITEMS)}",
            "qty": NUMBER_WORDS[quantity] if rng.random() < 0.5 else str(quantity),
            "city": rng.choice(CITIES),
            "days": rng.randint(2, 5),
        }
        sentences = [rng.choice(OPENINGS), *rng.sample(DETAILS, k=rng.randint(2, 3)), rng.choice(CLOSINGS)]
        notes.append({"text": " ".join(s.format(**slots) for s in sentences)})
    return notes


def write_notes_dataset(dataset_dir: Path, n: int = 512, seed: int = NOTES_SEED) -> dict:
    (dataset_dir / "demo_order_notes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make_notes(n, seed)))
    return DATASET_INFO
