"""The built-in tool-calling task (`demo_tools`): LLaMA-Factory's sharegpt layout with a `tools`
column and function_call / observation turns (its glaive_toolcall demo's shape).

Each row asks for one or two things the tools can do; the model must call the right function
with the right arguments (quantities and units written in words become numbers and codes). A
two-request row carries the first call's observation and the assistant's reply to it, and ends
with the second call, so every row's last answer is a function call to score. Generated
deterministically from a seed.
"""

from __future__ import annotations

import json
import random

TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "description": "Temperature unit", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
    {
        "name": "convert_currency",
        "description": "Convert an amount of money between currencies.",
        "parameters": {
            "type": "object",
            "properties": {
                "amount": {"type": "number", "description": "Amount to convert"},
                "from_currency": {"type": "string", "description": "ISO code of the source currency"},
                "to_currency": {"type": "string", "description": "ISO code of the target currency"},
            },
            "required": ["amount", "from_currency", "to_currency"],
        },
    },
    {
        "name": "book_table",
        "description": "Reserve a restaurant table.",
        "parameters": {
            "type": "object",
            "properties": {
                "people": {"type": "integer", "description": "Number of guests"},
                "time": {"type": "string", "description": "Time as HH:MM, 24-hour"},
            },
            "required": ["people", "time"],
        },
    },
]
CITIES = ["Porto", "Oslo", "Lyon", "Kyoto", "Austin", "Lagos", "Graz", "Pune"]
CURRENCIES = {"euros": "EUR", "dollars": "USD", "yen": "JPY", "pounds": "GBP"}
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def _request(rng: random.Random) -> tuple[str, dict, str, str]:
    """(user text, call, observation JSON, assistant reply to the observation)."""
    kind = rng.randrange(3)
    if kind == 0:
        city, unit = rng.choice(CITIES), rng.choice(["celsius", "fahrenheit"])
        degrees = rng.randint(-5, 35) if unit == "celsius" else rng.randint(25, 95)
        return (
            f"What's the weather in {city} right now, in {unit}?",
            {"name": "get_weather", "arguments": {"city": city, "unit": unit}},
            json.dumps({"city": city, "temperature": degrees, "unit": unit}),
            f"It is {degrees} degrees {unit} in {city}.",
        )
    if kind == 1:
        amount = rng.choice([5, 20, 40, 75, 120, 300])
        src, dst = rng.sample(sorted(CURRENCIES), 2)
        rate = round(rng.uniform(0.5, 2.0), 2)
        return (
            f"How much is {amount} {src} in {dst}?",
            {
                "name": "convert_currency",
                "arguments": {"amount": amount, "from_currency": CURRENCIES[src], "to_currency": CURRENCIES[dst]},
            },
            json.dumps({"converted": round(amount * rate, 2)}),
            f"{amount} {src} is {round(amount * rate, 2)} {dst}.",
        )
    people, hour = rng.randint(2, 8), rng.randint(17, 22)
    people_text = NUMBER_WORDS[people] if rng.random() < 0.5 else str(people)
    return (
        f"Book a table for {people_text} at {hour - 12} pm, please.",
        {"name": "book_table", "arguments": {"people": people, "time": f"{hour}:00"}},
        json.dumps({"status": "confirmed", "table": rng.randint(1, 30)}),
        f"Your table for {people} at {hour}:00 is booked.",
    )


def make_tool_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        turns = []
        if rng.random() < 0.4:  # a first request answered in full, then the scored call
            user, call, observation, reply = _request(rng)
            turns += [
                {"from": "human", "value": user},
                {"from": "function_call", "value": json.dumps(call)},
                {"from": "observation", "value": observation},
                {"from": "gpt", "value": reply},
            ]
        user, call, _, _ = _request(rng)
        turns += [{"from": "human", "value": user}, {"from": "function_call", "value": json.dumps(call)}]
        rows.append({"conversations": turns, "tools": json.dumps(TOOLS)})
    return rows


DATASET_INFO = {
    "demo_tools": {
        "file_name": "demo_tools.json",
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "tools": "tools"},
    }
}
