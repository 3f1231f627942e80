"""The promotion gate: does the fine-tune beat the incumbent (champion, else base) by enough, with a
paired bootstrap over per-example scores, a passing merge check and no guard-set regression?"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from peftflow.config import PromotionConfig, RunConfig
from peftflow.evaluation.report import EvalReport, ModelScores
from peftflow.mlflow_io.aliases import move_champion


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str  # one human line
    candidate: float
    incumbent: float | None
    incumbent_label: str  # "champion v3" or "base model"


def paired_bootstrap(
    candidate: list[float], incumbent: list[float], samples: int, confidence: float, seed: int = 0
) -> tuple[float, float, float]:
    """Mean paired difference (candidate - incumbent) and its bootstrap confidence interval.

    `candidate[i]` and `incumbent[i]` score the same example. Resamples examples with replacement
    `samples` times; returns (mean, lower, upper) of the percentile interval at `confidence`.
    """
    if len(candidate) != len(incumbent) or not candidate:
        raise ValueError(
            f"paired bootstrap needs two equal, non-empty score lists (got {len(candidate)} and {len(incumbent)})"
        )
    diffs = np.asarray(candidate, dtype=float) - np.asarray(incumbent, dtype=float)
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(samples, len(diffs)))].mean(axis=1)
    tail = (1.0 - confidence) / 2
    return float(diffs.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def decide_promotion(
    metric: str,
    candidate: float,
    incumbent: float | None,
    incumbent_label: str,
    min_improvement: float,
    higher_is_better: bool = True,
    *,
    paired: tuple[list[float], list[float]] | None = None,
    bootstrap_samples: int = 0,
    confidence: float = 0.95,
    merge_passed: bool = True,
    guard: tuple[float, float] | None = None,
    guard_tolerance: float = 0.0,
) -> GateDecision:
    """Promote when the candidate beats the incumbent by at least `min_improvement`.

    With a margin >= 0 a tie never promotes (the champion stays put). A NaN candidate never promotes; a missing or
    NaN incumbent always loses to a finite candidate.

    Further checks, each of which can only refuse:
    - `merge_passed=False` (the merge fidelity check failed) refuses.
    - `paired` = (candidate, incumbent) per-example scores of the same examples, with
      `bootstrap_samples > 0`: the lower bound of the paired bootstrap interval of the mean
      improvement (at `confidence`) must clear `min_improvement`, not only the point estimate.
    - `guard` = (candidate, incumbent) loss on a guard set of general-ability rows (lower is
      better): a rise of more than `guard_tolerance` refuses.
    """

    def decision(ok: bool, why: str) -> GateDecision:
        return GateDecision(ok, why, candidate, incumbent, incumbent_label)

    if not merge_passed:
        return decision(False, "merge fidelity check failed; not promoted")
    point = _point_decision(metric, candidate, incumbent, incumbent_label, min_improvement, higher_is_better)
    if not point.promote:
        return point
    reason = point.reason
    if paired is not None and bootstrap_samples > 0 and paired[0]:
        cand, inc = paired
        if not higher_is_better:
            cand, inc = [-x for x in cand], [-x for x in inc]
        mean, lower, upper = paired_bootstrap(cand, inc, bootstrap_samples, confidence)
        ci = f"{confidence:.0%} paired bootstrap CI of the gain [{lower:.4f}, {upper:.4f}] over {len(cand)} examples"
        clears = lower > min_improvement or (min_improvement < 0 and lower >= min_improvement)
        if not clears:
            return decision(False, f"{reason}, but the {ci} does not clear {min_improvement:.4f}; not promoted")
        reason = f"{reason}; {ci}"
    if guard is not None:
        if guard_regressed(guard[0], guard[1], guard_tolerance):
            return decision(
                False,
                f"{reason}, but the guard-set loss regressed from {guard[1]:.4f} to {guard[0]:.4f} "
                f"(tolerance {guard_tolerance:.4f}); not promoted",
            )
        reason = f"{reason}; guard-set loss {guard[0]:.4f} vs {guard[1]:.4f}"
    return decision(True, reason)


def guard_regressed(loss: float, incumbent_loss: float, tolerance: float) -> bool:
    """The guard rule: the loss may rise above the incumbent's by at most `tolerance`; NaN fails."""
    return math.isnan(loss) or loss - incumbent_loss > tolerance + 1e-12


def guard_verdict(loss: float, previous_loss: float | None, tolerance: float) -> tuple[bool, str]:
    """The guard rule for a champion moved by hand, against the champion it replaced (none: passes)."""
    if previous_loss is None:
        return True, f"guard-set loss {loss:.4f}; no previous champion to compare with"
    if guard_regressed(loss, previous_loss, tolerance):
        return False, f"guard-set loss rose from {previous_loss:.4f} to {loss:.4f} (tolerance {tolerance:.4f})"
    return True, f"guard-set loss {loss:.4f} vs {previous_loss:.4f} (tolerance {tolerance:.4f})"


def _point_decision(
    metric: str,
    candidate: float,
    incumbent: float | None,
    incumbent_label: str,
    min_improvement: float,
    higher_is_better: bool,
) -> GateDecision:
    def decision(ok: bool, why: str) -> GateDecision:
        return GateDecision(ok, why, candidate, incumbent, incumbent_label)

    if candidate is None or math.isnan(candidate):
        return decision(False, f"{metric} of the candidate is not a number; not promoted")
    if incumbent is None or math.isnan(incumbent):
        return decision(True, f"{metric} {candidate:.4f}; {incumbent_label} has no {metric} to beat")
    gain = candidate - incumbent if higher_is_better else incumbent - candidate
    lower = "" if higher_is_better else " (lower is better)"
    vs = f"{incumbent_label} ({incumbent:.4f})"
    # A margin >= 0 means "must beat": a tie keeps the incumbent. A negative margin accepts a
    # candidate up to that much worse. The epsilon forgives float noise (0.71 - 0.5 < 0.21).
    passed = gain >= min_improvement - 1e-12 and (gain > 0 or min_improvement < 0)
    if passed and gain > 0:
        return decision(True, f"{metric} {candidate:.4f} beats {vs} by {gain:.4f} >= {min_improvement:.4f}{lower}")
    if passed:
        return decision(True, f"{metric} {candidate:.4f} is within the allowed {-min_improvement:.4f} of {vs}{lower}")
    if gain == 0:
        return decision(False, f"{metric} {candidate:.4f} ties {vs}; not promoted{lower}")
    if gain < 0:
        return decision(False, f"{metric} {candidate:.4f} is worse than {vs} by {-gain:.4f}; not promoted{lower}")
    return decision(
        False, f"{metric} {candidate:.4f} beats {vs} by only {gain:.4f} < {min_improvement:.4f}; not promoted{lower}"
    )


def gate(
    config: RunConfig, evaluation: EvalReport, merge_passed: bool = True, guard: tuple[float, float] | None = None
) -> GateDecision:
    """The promotion gate: the configured metric (or `promotion.harness_metric`, an lm-eval score),
    tuned vs champion (or base), plus the paired bootstrap over per-example scores (metric `score`,
    when enabled), the merge fidelity and the guard-set loss (when a guard set is configured)."""
    p = config.promotion
    metric = p.metric
    incumbent = "champion" if "champion" in evaluation.models else "base"
    value = lambda label: getattr(evaluation.models[label], metric)  # noqa: E731
    paired = None
    if p.harness_metric:  # an lm-eval aggregate: no per-example scores for the bootstrap
        metric = f"harness {p.harness_metric}"
        value = lambda label: evaluation.models[label].harness.get(p.harness_metric, math.nan)  # noqa: E731
    elif metric == "score" and p.bootstrap_samples:
        paired = paired_scores(evaluation, "tuned", incumbent)
    return decide_promotion(
        metric,
        value("tuned"),
        value(incumbent),
        "current champion" if incumbent == "champion" else "base model",
        p.min_improvement,
        higher_is_better=metric == "score" or bool(p.harness_metric),
        paired=paired,
        bootstrap_samples=p.bootstrap_samples,
        confidence=p.confidence,
        merge_passed=merge_passed,
        guard=guard,
        guard_tolerance=p.guard_tolerance,
    )


def paired_scores(evaluation: EvalReport, a: str, b: str) -> tuple[list[float], list[float]]:
    """Per-example scores of two models of one report on the examples both scored."""
    return paired_examples(evaluation.models[a], evaluation.models[b])


def paired_examples(a: ModelScores, b: ModelScores) -> tuple[list[float], list[float]]:
    """Per-example scores of two models on the examples both scored, aligned by example index."""
    left = {e["index"]: e["score"] for e in a.examples}
    right = {e["index"]: e["score"] for e in b.examples}
    common = sorted(left.keys() & right.keys())
    return [left[i] for i in common], [right[i] for i in common]


def promote(name: str, version: str, decision: GateDecision, actor: str) -> str | None:
    """Move `champion` to `version` when the gate passed; the old champion becomes `previous`.
    Returns the new champion version, or None when the gate refused."""
    if not decision.promote:
        return None
    return move_champion(name, version, decision.reason, actor)


def with_sweep_verdict(decision: GateDecision, sweep_verdict: tuple[bool, str] | None) -> GateDecision:
    """The gate's decision on a sweep's winner, given `sweep_verdict` = (decided, why) against its
    runner-up: the reason leads with the verdict, and a winner the sweep could not tell from its
    runner-up is not promoted. No verdict (not a sweep): the gate's decision as it is."""
    if sweep_verdict is None:
        return decision
    decided, why = sweep_verdict
    return replace(
        decision,
        promote=decision.promote and decided,
        reason=f"{why}; {decision.reason}" + ("" if decided else "; not promoted"),
    )


def moves_champion_now(promotion: PromotionConfig, decision: GateDecision) -> bool:
    """The gate passed and nobody has to approve: `champion` moves in the same run."""
    return decision.promote and promotion.auto_promote and not promotion.require_approval


def needs_approval(promotion: PromotionConfig, decision: GateDecision) -> bool:
    """The gate passed but a person approves first: the run pauses with the approval form."""
    return decision.promote and promotion.auto_promote and promotion.require_approval


def with_approval(decision: GateDecision, approved: bool, reason: str, approver: str) -> GateDecision:
    """The decision after a person answered the approval form: theirs, with their reason appended."""
    verdict = f"approved by {approver}" if approved else f"rejected by {approver}"
    return replace(decision, promote=approved, reason=f"{decision.reason}; {verdict}: {reason}")
