"""What a person reads about a run: the loss curve and the Markdown summary."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: workers have no display
import matplotlib.pyplot as plt  # noqa: E402


def loss_curve(history: tuple[tuple[int, float], ...], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if history:
        steps, losses = zip(*history)
        ax.plot(steps, losses, marker="o", markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary_markdown(name: str, version: str | None, metric: str, scores: dict[str, dict[str, float]],
                     decision: str, champion: str | None, notes: list[str]) -> str:
    rows = "\n".join(f"| {label} | {s['score']:.4f} | {s['loss']:.4f} | {s['perplexity']:.4f} |"
                     for label, s in scores.items())
    lines = [
        f"# Fine-tune `{name}`" + (f" version {version}" if version else ""),
        "",
        f"**Registered as** `models:/{name}/{version}` (MLflow registered model `{name}`)" if version else
        "**Not registered**",
        "",
        f"| model | {metric} | held-out loss | perplexity |",
        "|---|---|---|---|",
        rows,
        "",
        f"**Aliases:** `challenger` -> v{version}; `champion` -> v{champion}" if champion else
        f"**Aliases:** `challenger` -> v{version}; no champion",
        "",
        f"**Promotion gate:** {decision}",
    ]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines)


def trainable_parts_line(trainable_by_part: dict[str, int], total: int) -> str:
    """Which parts of a vision-language model trained, e.g. 'vision tower 0, projector 8,320, LoRA 16,384'."""
    names = {"vision_tower": "vision tower", "projector": "projector", "lora": "LoRA", "other": "other"}
    parts = ", ".join(f"{names[k]} {v:,}" for k, v in trainable_by_part.items() if k != "other" or v)
    return f"trainable parameters: {parts} (of {total:,})"


def training_notes(run_id: str, key: str, data, adapter) -> list[str]:
    """The summary's lines about where the run is recorded, its data and how it trained."""
    notes = [f"MLflow run `{run_id}`; training key `{key}`",
             f"{data.train_rows} train / {data.eval_rows} held-out rows; {data.dropped} dropped",
             f"optimizer: {adapter.optimizer_used}; compute: {adapter.compute}",
             f"gradient checkpointing {adapter.gradient_checkpointing}; peak memory {adapter.peak_memory_mb:,.0f} MB"]
    if adapter.trainable_by_part:  # a vision-language model: which of its parts trained
        notes.append(trainable_parts_line(adapter.trainable_by_part, adapter.total_params))
    return notes
