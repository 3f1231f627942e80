"""What a person reads about a sweep: one row per variant, the Markdown report, and two charts
(every variant's loss curve; the score against each swept value)."""

from __future__ import annotations

from pathlib import Path

from peftflow.evaluation.report import ModelScores
from peftflow.summary import plt
from peftflow.sweep.ranking import Ranking, VariantResult, metric_value


def table_rows(ranking: Ranking, failed: list[VariantResult], metric: str, swept: tuple[str, ...]) -> list[dict]:
    """One row per variant: the winner first, then by metric; failed variants last."""
    rows = []
    for place, r in enumerate(ranking.order, start=1):
        t = r.train
        rows.append(
            {
                "rank": place,
                "variant": r.name,
                **{k: r.swept.get(k, "") for k in swept},
                **({} if metric == "score" else {metric: round(metric_value(r, metric), 4)}),
                "score": round(r.tuned.score, 4),
                "held-out loss": float(f"{r.tuned.loss:.4g}"),
                "peak memory MB": round(t.peak_memory_mb),
                "trainable params": t.trainable_params,
                "s/step": round(r.seconds_per_step, 3),
                "tokens/s": round(t.tokens_per_second, 1),
                "train key": r.train_key,
            }
        )
    rows += [
        {"rank": "-", "variant": r.name, **{k: r.swept.get(k, "") for k in swept}, "failed": r.failed} for r in failed
    ]
    return rows


def report_markdown(
    name: str,
    rows: list[dict],
    ranking: Ranking,
    references: dict[str, ModelScores],
    metric: str,
    decision: str,
    version: str | None,
    champion: str | None,
) -> str:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    extra = "" if metric == "score" else f" {metric} |"
    lines = [
        f"# Sweep of `{name}`: {len(rows)} variants",
        "",
        f"**Winner:** {ranking.verdict}.",
        "",
        f"**Promotion gate:** {decision.removeprefix(ranking.verdict + '; ')}",
        "",
        (f"**Registered:** `models:/{name}/{version}` as `challenger`" if version else "**Registered:** nothing")
        + (f"; `champion` -> v{champion}" if champion else "; no champion"),
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
    ]
    lines += ["| " + " | ".join(_cell(row.get(k, "")) for k in keys) + " |" for row in rows]
    lines += ["", f"| reference |{extra} score | held-out loss |", "|---|" + "---|" * (3 if extra else 2)]
    lines += [
        f"| {label} |" + (f" {getattr(s, metric):.4f} |" if extra else "") + f" {s.score:.4f} | {s.loss:.4g} |"
        for label, s in references.items()
    ]
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def loss_curves(results: list[VariantResult], path: Path) -> Path:
    """Every variant's training loss against the optimizer step, on one chart."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        if r.train and r.train.loss_history:
            steps, losses = zip(*r.train.loss_history)
            ax.plot(steps, losses, marker="o", markersize=2, label=r.name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def score_by_value(results: list[VariantResult], swept: tuple[str, ...], metric: str, path: Path) -> Path:
    """One panel per swept key (up to two; more: one axis of variant names): each variant's metric
    against that key's value, and its held-out loss on the right axis (it still separates variants
    that tie on the metric). A numeric key spanning more than 10x is drawn on a log axis."""
    keys = swept if 1 <= len(swept) <= 2 else ("variant",)
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        values = [r.swept.get(key) if key != "variant" else r.name for r in results]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        order = sorted(range(len(results)), key=lambda i: values[i] if numeric else i)
        xs = [values[i] for i in order] if numeric else list(range(len(order)))
        ax.plot(xs, [metric_value(results[i], metric) for i in order], "o-", label=metric)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if numeric and min(xs) > 0 and max(xs) / min(xs) > 10:
            ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(xs, [str(values[i]) for i in order], rotation=0 if numeric else 20, fontsize=8)
        if metric != "loss":
            loss_ax = ax.twinx()
            loss_ax.plot(xs, [results[i].tuned.loss for i in order], "s--", color="tab:orange", label="held-out loss")
            loss_ax.set_ylabel("held-out loss", color="tab:orange")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
