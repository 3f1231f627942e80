"""What a person reads about a run: the loss curve and the Markdown summary."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: workers have no display
import matplotlib.pyplot as plt  # noqa: E402


def loss_curve(
    history: tuple[tuple[int, float], ...], path: Path, eval_history: tuple[tuple[int, float], ...] = ()
) -> Path:
    """The training loss per logging step, and the held-out loss per evaluation (eval_strategy)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, points in (("training", history), ("held-out", eval_history)):
        if points:
            steps, losses = zip(*points)
            ax.plot(steps, losses, marker="o", markersize=3, label=label)
    if eval_history:
        ax.legend()
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary_markdown(
    name: str,
    version: str | None,
    metric: str,
    scores: dict[str, dict[str, float]],
    decision: str,
    champion: str | None,
    notes: list[str],
) -> str:
    rows = "\n".join(
        f"| {label} | {s['score']:.4f} | {s['loss']:.4f} | {s['perplexity']:.4f} |" for label, s in scores.items()
    )
    lines = [
        f"# Fine-tune `{name}`" + (f" version {version}" if version else ""),
        "",
        f"**Registered as** `models:/{name}/{version}` (MLflow registered model `{name}`)"
        if version
        else "**Not registered**",
        "",
        f"| model | {metric} | held-out loss | perplexity |",
        "|---|---|---|---|",
        rows,
        "",
        f"**Aliases:** `challenger` -> v{version}; `champion` -> v{champion}"
        if champion
        else f"**Aliases:** `challenger` -> v{version}; no champion",
        "",
        f"**Promotion gate:** {decision}",
    ]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines)


def harness_lines(harness: dict[str, dict[str, float]]) -> list[str]:
    """One note per lm-eval `TASK/METRIC`: its value for each scored model (label -> scores)."""
    keys = sorted({k for scores in harness.values() for k in scores})
    return [
        f"lm-eval `{k}`: " + ", ".join(f"{label} {s[k]:.4f}" for label, s in harness.items() if k in s) for k in keys
    ]


def trainable_parts_line(trainable_by_part: dict[str, int], total: int) -> str:
    """Which parts of a vision-language model trained, e.g. 'vision tower 0, projector 8,320, LoRA 16,384'."""
    names = {"vision_tower": "vision tower", "projector": "projector", "lora": "LoRA", "other": "other"}
    parts = ", ".join(f"{names[k]} {v:,}" for k, v in trainable_by_part.items() if k != "other" or v)
    return f"trainable parameters: {parts} (of {total:,})"


def training_notes(run_id: str, key: str, data, adapter) -> list[str]:
    """The summary's lines about where the run is recorded, its data and how it trained."""
    notes = [
        f"MLflow run `{run_id}`; training key `{key}`",
        f"{data.train_rows} train / {data.eval_rows} held-out rows; {data.dropped} dropped",
        f"optimizer: {adapter.optimizer_used}; compute: {adapter.compute}",
        f"gradient checkpointing {adapter.gradient_checkpointing}; peak memory {adapter.peak_memory_mb:,.0f} MB",
    ]
    if adapter.trainable_by_part:  # a vision-language model: which of its parts trained
        notes.append(trainable_parts_line(adapter.trainable_by_part, adapter.total_params))
    return notes + evaluated_notes(adapter)


def evaluated_notes(adapter) -> list[str]:
    """What evaluation during training (eval_strategy) decided: the best step, an early stop and why."""
    notes = []
    if getattr(adapter, "best_step", None):
        notes.append(
            f"best {adapter.best_metric_name} during training: {adapter.best_metric:.4f} at step {adapter.best_step}"
        )
    if getattr(adapter, "stopped_early_at", None):
        notes.append(f"stopped early at step {adapter.stopped_early_at}: {adapter.stop_reason}")
    return notes


CARD_HEADING = "# Model card:"  # where the card starts in a version's description
# The recipe keys a reader of the card wants first; the run's params hold the whole config.
RECIPE_KEYS = (
    "stage",
    "finetuning_type",
    "model_name_or_path",
    "dataset",
    "template",
    "cutoff_len",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_target",
    "quantization_bit",
    "learning_rate",
    "lr_scheduler_type",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "seed",
)


def model_card(
    name: str,
    uri: str,
    lineage: dict[str, str],
    metrics: dict[str, float],
    recipe: dict[str, str],
    kind: str,
    images: bool = False,
) -> str:
    """The model card (Markdown): scores, recipe, lineage and how to load `uri` (`images`: a
    vision-language version, a chat pyfunc). The gate decision is added with the finetune summary
    once the version was gated (`version_description`)."""
    scores = "\n".join(f"| {k} | {v:.4g} |" for k, v in sorted(metrics.items())) or "| (none) | |"
    steps = "\n".join(f"- {k}: `{recipe[k]}`" for k in RECIPE_KEYS if recipe.get(k) not in (None, "", "None"))
    lines = "\n".join(f"- {k}: `{v}`" for k, v in sorted(lineage.items()) if v)
    what = (
        "a PEFT adapter on its base model (the base must exist at `base_model_path`)"
        if kind == "adapter"
        else "the fine-tune merged into its base model"
    )
    return "\n".join(
        [
            f"{CARD_HEADING} {name}",
            "",
            f"A fine-tune of `{lineage.get('base_model', '?')}` published by peftflow: {what}.",
            "",
            "## Held-out scores",
            "",
            "| metric | value |",
            "|---|---|",
            scores,
            "",
            "## Recipe",
            "",
            steps or "- (not recorded)",
            "",
            "## Lineage",
            "",
            lines,
            "",
            "## How to load",
            "",
            "```python",
            "import mlflow",
            *(_image_chat_example(uri) if images else [f'pipe = mlflow.transformers.load_model("{uri}")']),
            "```",
            "",
            f'`peftflow generate --model {uri} --prompt "..."{" --image FILE" if images else ""}`; '
            f"`mlflow models serve -m {uri}` serves it over HTTP.",
            "",
            "## Licence",
            "",
            f"The licence is the base model's (`{lineage.get('base_model', '?')}`); peftflow adds no terms.",
        ]
    )


def _image_chat_example(uri: str) -> list[str]:
    return [
        f'model = mlflow.pyfunc.load_model("{uri}")',
        'image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}  # or a local path',
        'model.predict({"messages": [{"role": "user", "content": [image, {"type": "text", "text": "..."}]}],',
        '               "max_tokens": 32})["choices"][0]["message"]["content"]',
    ]


def version_description(summary: str, card: str) -> str:
    """What the registered version's page shows: the finetune summary (scores, aliases, gate
    decision, notes), then its model card."""
    return f"{summary}\n\n{card}"
