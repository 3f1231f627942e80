"""Per-example generation metrics: (prediction, reference) -> a score in [0, 1]."""

from __future__ import annotations

import json
import re
from collections import Counter


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


METRICS = {"exact_match": exact_match, "token_f1": token_f1, "json_fields": json_fields, "answer_accuracy": answer_accuracy}
