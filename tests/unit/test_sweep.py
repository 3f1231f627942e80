"""Sweeps without training: the grid and its variants, the ranking, the report and its charts."""

from __future__ import annotations

import pytest

from peftflow.config import RunConfig, demo_config, parse_config
from peftflow.errors import UserError
from peftflow.evaluation.report import ModelScores
from peftflow.lineage import train_key
from peftflow.sweep.plan import grid_from_options, parse_grid_option, plan_sweep, read_sweep_file
from peftflow.sweep.ranking import VariantResult, rank
from peftflow.sweep.report import loss_curves, report_markdown, score_by_value, table_rows
from peftflow.training.run import TrainResult


def test_grid_options_parse_each_value_as_written():
    assert parse_grid_option("lora_rank=4,8,16") == ("lora_rank", [4, 8, 16])
    assert parse_grid_option("learning_rate=2e-4, 1e-3") == ("learning_rate", [2e-4, 1e-3])
    assert parse_grid_option("use_dora=false,true") == ("use_dora", [False, True])
    assert parse_grid_option("finetuning_type=lora,ia3") == ("finetuning_type", ["lora", "ia3"])
    assert grid_from_options(["lora_rank=4,8", "learning_rate=1e-3"]) == {"lora_rank": [4, 8], "learning_rate": [1e-3]}
    for bad in ("lora_rank", "lora_rank=", "=4,8"):
        with pytest.raises(UserError, match="expected KEY=V1,V2"):
            parse_grid_option(bad)
    with pytest.raises(UserError, match="--grid lora_rank: given twice"):
        grid_from_options(["lora_rank=4", "lora_rank=8"])


def test_a_grid_is_every_combination_and_each_variant_trains_what_its_yaml_would():
    base, _ = parse_config({"max_steps": 10, "dataset": "demo_orders"})
    plan = plan_sweep(base, {"lora_rank": [4, 8], "learning_rate": [2e-4, 1e-3]})
    assert [v.name for v in plan.variants] == [
        "lora_rank=4 learning_rate=0.0002",
        "lora_rank=4 learning_rate=0.001",
        "lora_rank=8 learning_rate=0.0002",
        "lora_rank=8 learning_rate=0.001",
    ]
    assert plan.swept_keys == ("lora_rank", "learning_rate")
    assert [(v.config.lora_rank, v.config.learning_rate) for v in plan.variants] == [
        (4, 2e-4),
        (4, 1e-3),
        (8, 2e-4),
        (8, 1e-3),
    ]
    # The same train key as `peftflow run` of the YAML with those keys: a sweep reuses plain runs' training.
    written, _ = parse_config({"max_steps": 10, "dataset": "demo_orders", "lora_rank": 4, "learning_rate": 2e-4})
    assert train_key(plan.variants[0].config, "m", "d") == train_key(written, "m", "d")
    assert train_key(plan.variants[0].config, "m", "d") != train_key(plan.variants[1].config, "m", "d")


def test_variants_cross_the_grid_and_keep_their_names():
    plan = plan_sweep(
        demo_config(),
        {"lora_rank": [4, 16]},
        [{"name": "lora"}, {"name": "dora", "use_dora": True}, {"finetuning_type": "ia3"}],
    )
    assert [v.name for v in plan.variants] == [
        "lora lora_rank=4",
        "lora lora_rank=16",
        "dora lora_rank=4",
        "dora lora_rank=16",
        "finetuning_type=ia3 lora_rank=4",
        "finetuning_type=ia3 lora_rank=16",
    ]
    assert plan.variants[2].config.use_dora and plan.variants[4].config.finetuning_type == "ia3"
    assert set(plan.swept_keys) == {"use_dora", "finetuning_type", "lora_rank"}


@pytest.mark.parametrize(
    ("grid", "variants", "message"),
    [
        ({"lora_rank": [4, 0]}, None, "sweep variant 'lora_rank=0': key 'lora_rank': Input should be greater than 0"),
        ({"lora_rnk": [4, 8]}, None, "sweep variant 'lora_rnk=4': unknown key 'lora_rnk' (did you mean 'lora_rank'?)"),
        ({"dataset": ["a", "b"]}, None, "key 'dataset' cannot vary in a sweep: it shapes the prepared data"),
        ({"cutoff_len": [256, 512]}, None, "key 'cutoff_len' cannot vary in a sweep: it shapes the prepared data"),
        (
            None,
            [{"registry": {"name": "x"}}, {}],
            "key 'registry' cannot vary in a sweep: the sweep has one registered model",
        ),
        (None, [{"stage": "distill"}, {}], "key 'stage' cannot vary in a sweep"),
        ({"lora_rank": [8, 8]}, None, "variants 'lora_rank=8' and 'lora_rank=8' are the same config"),
        ({"lora_rank": [8]}, None, "a sweep compares at least two variants (this one has 1)"),
        ({}, [], "nothing to sweep"),
        ({"lora_rank": []}, None, "grid key 'lora_rank': expected a non-empty list of values"),
    ],
)
def test_a_bad_sweep_is_one_line_naming_the_variant_and_key(grid, variants, message):
    with pytest.raises(UserError) as e:
        plan_sweep(demo_config(), grid, variants)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_yaml_section_and_the_command_line(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "lora_rank: 8\nmax_steps: 10\nsweep:\n  grid:\n    lora_rank: [4, 8]\n    learning_rate: 1.0e-3\n"
        "  variants:\n    - {name: plain}\n    - {name: dora, use_dora: true}\n  max_parallel: 2\n"
    )
    request, plan = read_sweep_file(str(path), [])
    assert (request.max_parallel, len(plan.variants), request.base.max_steps) == (2, 4, 10)
    assert request.grid == {"lora_rank": [4, 8], "learning_rate": [1e-3]}
    # The command line replaces a key of the section's grid and the section's max_parallel.
    request, plan = read_sweep_file(str(path), ["lora_rank=16,32"], max_parallel=1)
    assert [v.config.lora_rank for v in plan.variants] == [16, 32, 16, 32] and request.max_parallel == 1
    # One run does not silently drop the section.
    with pytest.raises(UserError, match="key 'sweep': a sweep section runs with `peftflow sweep"):
        parse_config({"lora_rank": 8, "sweep": {"grid": {"lora_rank": [4]}}}, source=str(path))
    path.write_text("sweep:\n  grids: {lora_rank: [4, 8]}\n")
    with pytest.raises(UserError, match=r"unknown key 'sweep.grids' \(did you mean 'sweep.grid'\?\)"):
        read_sweep_file(str(path), [])


def result(
    name: str, scores: list[float], trainable: int, seconds: float = 10.0, failed: str = "", loss: float = 1.0
) -> VariantResult:
    if failed:
        return VariantResult(name, {}, name, "", failed=failed)
    train = TrainResult("", loss, 10, seconds, 100, 10.0, trainable, 1000, None, ((1, 2.0), (10, loss)))
    examples = [{"index": i, "score": s} for i, s in enumerate(scores)]
    tuned = ModelScores("tuned", loss, 2.718**loss, sum(scores) / len(scores), examples)
    return VariantResult(name, {"lora_rank": trainable}, name, f"run-{name}", train, tuned)


def promotion(metric: str = "score", bootstrap: int = 1000) -> RunConfig:
    return RunConfig(promotion={"metric": metric, "bootstrap_samples": bootstrap}).promotion


def test_the_winner_beats_the_runner_up_by_the_paired_bootstrap():
    good, bad = [1.0] * 30, [1.0] * 10 + [0.0] * 20
    ranking = rank([result("r4", bad, 4), result("r16", good, 16), result("r8", good[:15] + bad[:15], 8)], promotion())
    assert [r.name for r in ranking.order] == ["r16", "r8", "r4"] and ranking.decided
    assert ranking.verdict.startswith(
        "`r16` beats runner-up `r8`: score 1.0000 vs 0.8333, gain +0.1667, 95% paired bootstrap"
    )


def test_variants_the_bootstrap_cannot_tell_apart_tie_and_the_cheapest_wins():
    a = [1.0] * 29 + [0.0]
    b = [1.0] * 28 + [0.0, 1.0]  # one row differs each way: no significant difference
    ranking = rank([result("r64", a, 64), result("r8", b[:-1] + [0.0], 8), result("r16", b, 16)], promotion())
    assert ranking.order[0].name == "r8" and ranking.decided
    assert "ties runner-up `r16` (score " in ranking.verdict and "costs less: 8 trainable parameters" in ranking.verdict
    # Without the bootstrap only equal values tie: the higher point score wins.
    plain = rank([result("r8", [1.0] * 29 + [0.0], 8), result("r16", [1.0] * 30, 16)], promotion(bootstrap=0))
    assert plain.order[0].name == "r16" and "beats runner-up `r8`" in plain.verdict
    # Equal score and equal cost: the sweep cannot decide, and says so (the gate then refuses).
    same = rank([result("x", a, 8), result("y", a, 8)], promotion())
    assert not same.decided and "the sweep cannot tell them apart" in same.verdict


def test_a_lower_is_better_metric_and_failed_variants():
    ranking = rank(
        [
            result("slow", [0.0], 8, loss=2.0),
            result("fast", [0.0], 8, loss=1.0),
            result("oom", [], 8, failed="CUDA out of memory"),
        ],
        promotion("loss"),
    )
    assert [r.name for r in ranking.order] == ["fast", "slow"]
    assert ranking.verdict.startswith("`fast` beats runner-up `slow`: loss 1.0000 vs 2.0000, gain +1.0000")
    with pytest.raises(RuntimeError, match="every variant of the sweep failed: oom: CUDA out of memory"):
        rank([result("oom", [], 8, failed="CUDA out of memory")], promotion())


def test_the_report_table_and_charts(tmp_path):
    results = [result("r4", [1.0, 0.0], 4), result("r16", [1.0, 1.0], 16), result("oom", [], 8, failed="OOM")]
    ranking = rank(results, promotion(bootstrap=0))
    rows = table_rows(ranking, [results[2]], "score", ("lora_rank",))
    assert [(r["rank"], r["variant"], r["lora_rank"]) for r in rows] == [(1, "r16", 16), (2, "r4", 4), ("-", "oom", "")]
    assert rows[0]["score"] == 1.0 and rows[0]["trainable params"] == 16 and rows[2]["failed"] == "OOM"
    references = {"base": ModelScores("base", 2.0, 7.4, 0.25)}
    markdown = report_markdown("m", rows, ranking, references, "score", "score 1.0 beats base", "3", "3")
    assert "`models:/m/3` as `challenger`; `champion` -> v3" in markdown and "| 1 | r16 | 16 | 1.0 |" in markdown
    assert "| base | 0.2500 | 2 |" in markdown and "Promotion gate:** score 1.0 beats base" in markdown
    for chart in (
        loss_curves(results[:2], tmp_path / "loss.png"),
        score_by_value(results[:2], ("lora_rank",), "score", tmp_path / "score.png"),
    ):
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 5000
