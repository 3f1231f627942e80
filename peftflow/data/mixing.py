"""Several datasets into one list of rows, as LLaMA-Factory's `mix_strategy` combines them (with
datasets' `interleave_datasets`, as it does): `concat` puts them one after another; the
`interleave_*` strategies draw each row's dataset at random (`interleave_probs`, else equal; seeded
by `seed`) until the first dataset runs out (`under`), until every one has, the ones that ran out
starting again (`over`), or until every row was drawn once (`once`)."""

from __future__ import annotations

from collections import Counter
from typing import TypeVar

T = TypeVar("T")

STOPPING = {
    "interleave_under": "first_exhausted",
    "interleave_over": "all_exhausted",
    "interleave_once": "all_exhausted_without_replacement",
}


def mix(
    per_dataset: list[tuple[str, list[T]]], strategy: str, probabilities: list[float] | None, seed: int
) -> tuple[list[T], dict | None]:
    """(the rows in mixed order, {"strategy", "rows": dataset name -> rows drawn} for the report;
    None for concat)."""
    names, rows = [name for name, _ in per_dataset], [r for _, r in per_dataset]
    # a dataset with no valid rows is a problem prepare reports; its rows are not mixed
    if strategy == "concat" or len(rows) < 2 or not all(rows):
        return [row for part in rows for row in part], None
    from datasets import Dataset, interleave_datasets

    parts = [
        Dataset.from_dict({"dataset": [k] * len(part), "row": list(range(len(part)))}) for k, part in enumerate(rows)
    ]
    drawn = interleave_datasets(parts, probabilities=probabilities, seed=seed, stopping_strategy=STOPPING[strategy])
    drawn_from = Counter(drawn["dataset"])
    counts = {name: drawn_from[d] for d, name in enumerate(names)}
    return [rows[k][i] for k, i in zip(drawn["dataset"], drawn["row"])], {"strategy": strategy, "rows": counts}
