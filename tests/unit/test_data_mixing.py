"""mix_strategy / interleave_probs: several datasets combined as LLaMA-Factory combines them, the
rows each contributed reported by `validate`, bad probabilities refused in one line."""

from __future__ import annotations

from collections import Counter

import pytest
from datasets import load_from_disk
from pydantic import ValidationError

from peftflow.config import RunConfig
from peftflow.data import data_report, prepare_dataset
from peftflow.data.mixing import mix

A, B = [f"a{i}" for i in range(40)], [f"b{i}" for i in range(10)]


def _mix(parts, strategy, probabilities, seed):
    rows, report = mix([(f"d{k}", part) for k, part in enumerate(parts)], strategy, probabilities, seed)
    assert report["strategy"] == strategy
    return rows, list(report["rows"].values())


def test_concat_keeps_each_dataset_whole_and_in_order():
    assert mix([("a", A), ("b", B)], "concat", None, 0) == (A + B, None)


def test_under_stops_when_the_first_dataset_runs_out():
    rows, counts = _mix([A, B], "interleave_under", [0.5, 0.5], 0)
    assert counts[1] == 10 and 0 < counts[0] < 40  # b ran out first: a was not read to its end
    assert rows[-1].startswith("b") and len(set(rows)) == len(rows) == sum(counts)


def test_over_goes_on_until_every_dataset_ran_out_reusing_rows():
    rows, counts = _mix([A, B], "interleave_over", [0.5, 0.5], 0)
    assert set(rows) == set(A + B)  # every row drawn
    assert counts[1] > 10 and Counter(r for r in rows if r.startswith("b")).most_common(1)[0][1] > 1


def test_once_draws_every_row_exactly_once_in_a_seeded_mix():
    rows, counts = _mix([A, B], "interleave_once", [0.5, 0.5], 0)
    assert sorted(rows) == sorted(A + B) and counts == [40, 10] and rows != A + B
    assert _mix([A, B], "interleave_once", [0.5, 0.5], 0)[0] == rows
    assert _mix([A, B], "interleave_once", [0.5, 0.5], 1)[0] != rows


def test_probabilities_set_each_datasets_share():
    big = [f"c{i}" for i in range(2000)]
    _, counts = _mix([big, big], "interleave_under", [0.8, 0.2], 0)
    assert counts[0] == 2000 and counts[1] / sum(counts) == pytest.approx(0.2, abs=0.02)


def qa_rows(n: int, tag: str) -> list[dict]:
    return [{"instruction": f"question {tag}{i}", "output": f"answer {tag}{i}"} for i in range(n)]


def test_prepared_data_and_the_report_follow_the_mix(write_dataset, tiny_model):
    info = {"big": {"file_name": "big.json"}, "small": {"file_name": "small.json"}}
    root = write_dataset(info, {"big.json": qa_rows(40, "a"), "small.json": qa_rows(10, "b")})
    cfg = RunConfig(
        dataset="big,small",
        dataset_dir=str(root),
        mix_strategy="interleave_over",
        interleave_probs="0.5,0.5",
        val_size=0.5,
    )
    report = data_report(cfg, tiny_model)
    rows = report.mixed["rows"]
    assert rows["big"] == 40 and rows["small"] > 10 and report.rows_kept == rows["big"] + rows["small"]
    assert f"mixed by interleave_over: big 40 ({40 / report.rows_kept:.1%})" in report.to_text()
    prepared = prepare_dataset(cfg, tiny_model)
    assert prepared.train_rows + prepared.eval_rows == report.rows_kept
    references = load_from_disk(f"{prepared.path}/eval")["reference"]
    assert any(r.startswith("answer b") for r in references) and any(r.startswith("answer a") for r in references)
    concat = prepare_dataset(cfg.model_copy(update={"mix_strategy": "concat", "interleave_probs": None}), tiny_model)
    assert concat.path != prepared.path and concat.train_rows + concat.eval_rows == 50  # its own cache entry


@pytest.mark.parametrize(
    ("overrides", "refusal"),
    [
        (dict(interleave_probs="0.5,0.5"), "interleave_probs is read only with mix_strategy interleave"),
        (dict(mix_strategy="interleave_under", interleave_probs="1.0"), "interleave_probs has 1 values for 2 datasets"),
        (dict(mix_strategy="interleave_under", interleave_probs="0.6,0.6"), "must be non-negative and sum to 1"),
        (dict(mix_strategy="interleave_sideways"), "mix_strategy"),
    ],
)
def test_bad_mixing_keys_are_refused_at_load(overrides, refusal):
    with pytest.raises(ValidationError, match=refusal):
        RunConfig(dataset="big,small", **overrides)
