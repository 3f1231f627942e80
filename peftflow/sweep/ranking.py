"""Which variant won, and by how much: ranked by the gate's metric; variants the paired bootstrap
cannot tell apart from the best count as tied, and the cheapest of them (fewest trainable
parameters, then fewest seconds per step) wins."""

from __future__ import annotations

import math
from dataclasses import dataclass

from peftflow.config.sections import PromotionConfig
from peftflow.evaluation.report import ModelScores
from peftflow.promotion import paired_bootstrap, paired_examples
from peftflow.training.run import TrainResult


@dataclass(frozen=True)
class VariantResult:
    name: str
    swept: dict  # the value of each swept key in this variant
    train_key: str
    run_id: str
    train: TrainResult | None = None
    tuned: ModelScores | None = None  # the fine-tune on the sweep's held-out rows
    failed: str = ""  # why the variant failed or cannot win ("" when it did not)

    @property
    def seconds_per_step(self) -> float:
        return self.train.train_seconds / max(self.train.steps, 1)

    def cost(self) -> tuple[int, float]:
        return self.train.trainable_params, self.seconds_per_step


@dataclass(frozen=True)
class Ranking:
    order: tuple[VariantResult, ...]  # the winner first, then by metric
    verdict: str  # why the winner won, against the runner-up
    decided: bool  # False: the winner ties the runner-up at equal cost


def metric_value(result: VariantResult, metric: str) -> float:
    return getattr(result.tuned, metric)


def rank(results: list[VariantResult], promotion: PromotionConfig) -> Ranking:
    """Rank the variants that ran; at least one must have."""
    metric, higher = promotion.metric, promotion.metric == "score"
    ok = [r for r in results if not r.failed]
    if not ok:
        raise RuntimeError("every variant of the sweep failed: " + "; ".join(f"{r.name}: {r.failed}" for r in results))

    def by_metric(r: VariantResult):
        v = metric_value(r, metric)
        return (math.isnan(v), -v if higher else v, r.cost())

    by_score = sorted(ok, key=by_metric)
    best = by_score[0]
    tied = [r for r in by_score if r is best or not _better(best, r, promotion)[0]]
    winner = min(tied, key=lambda r: r.cost())
    order = (winner, *[r for r in by_score if r is not winner])
    if len(order) == 1:
        return Ranking(order, f"`{winner.name}` is the only variant that trained", True)
    runner_up = order[1]
    beats, how = _better(winner, runner_up, promotion)
    if beats:
        return Ranking(order, f"`{winner.name}` beats runner-up `{runner_up.name}`: {how}", True)
    if winner.cost() < runner_up.cost():
        return Ranking(
            order,
            f"`{winner.name}` ties runner-up `{runner_up.name}` ({how}) and costs less: "
            f"{_cost(winner)} vs {_cost(runner_up)}",
            True,
        )
    return Ranking(
        order,
        f"`{winner.name}` and runner-up `{runner_up.name}` tie ({how}) at equal cost: the sweep cannot tell them apart",
        False,
    )


def _better(a: VariantResult, b: VariantResult, promotion: PromotionConfig) -> tuple[bool, str]:
    """Does `a` beat `b`: by the paired bootstrap over per-example scores (metric `score` with
    bootstrap_samples), else by the point value. Returns (beats, a line saying by how much)."""
    metric, higher = promotion.metric, promotion.metric == "score"
    va, vb = metric_value(a, metric), metric_value(b, metric)
    gain = va - vb if higher else vb - va
    how = f"{metric} {va:.4f} vs {vb:.4f}, gain {gain:+.4f}"
    if math.isnan(va):
        return False, how
    if math.isnan(vb):
        return True, how
    if metric == "score" and promotion.bootstrap_samples:
        ca, cb = paired_examples(a.tuned, b.tuned)
        if ca:
            _, lower, upper = paired_bootstrap(ca, cb, promotion.bootstrap_samples, promotion.confidence)
            interval = f"[{lower:+.4f}, {upper:+.4f}]"
            how += f", {promotion.confidence:.0%} paired bootstrap interval {interval} over {len(ca)} rows"
            return lower > 0, how
    return gain > 0, how


def _cost(r: VariantResult) -> str:
    return f"{r.train.trainable_params:,} trainable parameters, {r.seconds_per_step:.2f} s/step"
