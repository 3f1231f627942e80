"""Per-example generation metrics: (prediction, reference) -> a score in [0, 1]."""

from __future__ import annotations

import json
import re
from collections import Counter

from peftflow.data.tool_formats import extract_calls


def exact_match(pred: str, ref: str) -> float:
    return float(pred.strip() == ref.strip())


def token_f1(pred: str, ref: str) -> float:
    p, r = re.findall(r"\w+", pred.lower()), re.findall(r"\w+", ref.lower())
    common = sum((Counter(p) & Counter(r)).values())
    if not p or not r or not common:
        return float(p == r)
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def json_fields(pred: str, ref: str) -> float:
    """Share of the reference JSON object's fields that the prediction gets exactly right.
    A reference that is not a JSON object is scored by exact match."""
    try:
        expected = json.loads(ref)
    except json.JSONDecodeError:
        expected = None
    if not isinstance(expected, dict) or not expected:
        return exact_match(pred, ref)
    try:
        got = json.loads(pred.strip())
    except json.JSONDecodeError:
        return 0.0
    if not isinstance(got, dict):
        return 0.0
    return sum(got.get(k) == v for k, v in expected.items()) / len(expected)


def answer_accuracy(pred: str, ref: str) -> float:
    """Exact match up to case, spacing and trailing punctuation: a caption or short answer is right or not."""

    def norm(text: str) -> str:
        return " ".join(text.lower().split()).rstrip(".!")

    return float(norm(pred) == norm(ref))


def function_call(pred: str, ref: str) -> float:
    """Tool calling: per reference call, 1 when the prediction calls the same function (in order)
    with the same arguments, 0.5 when only the function is right; divided by the larger number of
    calls, so a missing or an extra call costs. The calls are read in any tool format peftflow
    writes (tool_formats.extract_calls); a reference that holds no call is scored by exact match."""
    expected = extract_calls(ref)
    if not expected:
        return exact_match(pred, ref)
    got = extract_calls(pred)
    points = sum(
        0.0 if g.name != e.name else 1.0 if json.loads(g.arguments) == json.loads(e.arguments) else 0.5
        for g, e in zip(got, expected)
    )
    return points / max(len(got), len(expected))


METRICS = {
    "exact_match": exact_match,
    "token_f1": token_f1,
    "json_fields": json_fields,
    "answer_accuracy": answer_accuracy,
    "function_call": function_call,
}
