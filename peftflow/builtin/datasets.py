"""The built-in demo task: turn a free-text order message into a fixed JSON record.

The base model answers in prose or with its own keys, so it scores low; a short LoRA run
learns the format and the extraction (quantities written as words become numbers). Rows are
generated deterministically from a seed, so every machine trains on the same data.
"""

from __future__ import annotations

import json
import random

FIRST = ["Maria", "Tom", "Aiko", "Omar", "Lena", "Ravi", "Sofia", "Jonas", "Chen", "Amara", "Lucas", "Nora"]
LAST = ["Lopez", "Becker", "Tanaka", "Haddad", "Novak", "Patel", "Rossi", "Berg", "Wang", "Okafor", "Silva", "Larsen"]
COLORS = ["red", "blue", "green", "black", "white", "yellow"]
ITEMS = ["lamp", "chair", "mug", "backpack", "notebook", "kettle", "towel", "clock"]
CITIES = ["Porto", "Oslo", "Lyon", "Kyoto", "Austin", "Lagos", "Graz", "Pune", "Quito", "Perth"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

INSTRUCTION = "Extract the order as JSON with keys customer, item, quantity, city."
PHRASINGS = [
    "Hi, this is {customer}. Please send {qty} {item}s to {city}.",
    "{customer} here - I need {qty} {item}s delivered in {city}.",
    "Order from {customer}: {qty} x {item}, ship to {city}.",
    "Could you deliver {qty} {item}s to {city}? Thanks, {customer}",
    "Ship {qty} {item}s to our office in {city}. Regards, {customer}.",
    "New order. Customer: {customer}. Destination: {city}. Items: {qty} {item}s.",
]
FIELDS = ("customer", "item", "quantity", "city")


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` alpaca rows (instruction / input / output)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        customer = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        item = f"{rng.choice(COLORS)} {rng.choice(ITEMS)}"
        quantity = rng.randint(2, 9)
        city = rng.choice(CITIES)
        qty_text = NUMBER_WORDS[quantity] if rng.random() < 0.5 else str(quantity)
        message = rng.choice(PHRASINGS).format(customer=customer, qty=qty_text, item=item, city=city)
        record = {"customer": customer, "item": item, "quantity": quantity, "city": city}
        rows.append({"instruction": INSTRUCTION, "input": message, "output": json.dumps(record)})
    return rows


def make_general_rows(n: int, seed: int = 1) -> list[dict]:
    """Small arithmetic questions: a guard set of general ability that the order task never trains on."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(2, 40), rng.randint(2, 12)
        op, word, value = rng.choice([("+", "plus", a + b), ("-", "minus", a - b), ("*", "times", a * b)])
        rows.append(
            {"instruction": f"What is {a} {word} {b}? Answer with the number.", "input": "", "output": str(value)}
        )
    return rows


PROMPT_SEED = 11  # order prompts drawn apart from the labelled rows' seed
