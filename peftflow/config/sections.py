"""peftflow's own sections of a run config: where the fine-tune is published (and the registered
model's default name), the gate that promotes it, and how it is evaluated."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from peftflow.config.form import plain_optionals, unprefix_titles
from peftflow.stages import STAGES


class Strict(BaseModel):
    # Inputs stay out of error texts: a mistyped key may hold a credential.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, hide_input_in_errors=True)

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        # The dashboard form: optional fields as plain inputs; in a section's card, titles without its name.
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        plain_optionals(target)
        unprefix_titles(target, cls.__name__.removesuffix("Config"))
        return schema


class RegistryConfig(Strict):
    """Where the fine-tune is published (MLflow model registry)."""

    name: str | None = Field(
        None,
        title="Registry: model name",
        description="Registered model name in MLflow. Default: from the run, so two recipes never share a "
        "champion: LLaMA-Factory's output_dir (its path parts joined by '-'), else "
        "MODEL-DATASET-FINETUNING_TYPE (distillation: TEACHER-student-...).",
    )
    experiment: str = Field(
        "peftflow", title="Registry: experiment", description="MLflow experiment that holds the runs."
    )
    description: str | None = Field(
        None,
        title="Registry: model description",
        description="The registered model's description in MLflow (Markdown), "
        "set on every publish; unset: left as it is (e.g. as written in the MLflow UI).",
    )
    gguf_outtype: Literal["f32", "f16", "bf16", "q8_0"] | None = Field(
        None,
        title="Registry: GGUF file",
        description="Also attach the merged model as one GGUF file (`model.gguf`, llama.cpp's converter, this "
        "outtype) to the registered version. Needs peftflow[gguf]. Merged versions only.",
    )
    vllm_ready: bool = Field(
        False,
        title="Registry: vLLM-ready adapter",
        description="An adapter version must be one vLLM serves: LoRA without modules_to_save (no "
        "additional_target), safetensors, tokenizer with chat template; else the run is refused.",
    )


class PromotionConfig(Strict):
    """The gate that moves the `champion` alias."""

    metric: Literal["score", "loss", "perplexity"] = Field(
        "score",
        title="Promotion: gate metric",
        description="Compared metric: `score` (generation metric, higher wins), `loss` or `perplexity` (lower wins).",
    )
    min_improvement: float = Field(
        0.0,
        title="Promotion: min improvement",
        description="How much the challenger must beat the champion (or base) by.",
    )
    auto_promote: bool = Field(
        True, title="Promotion: promote automatically", description="Move `champion` when the gate passes."
    )
    bootstrap_samples: int = Field(
        0,
        ge=0,
        title="Promotion: bootstrap resamples",
        description="Paired bootstrap resamples over per-example scores (metric `score` only); "
        "> 0: promote only when the lower confidence bound of the gain clears min_improvement. 0: off.",
    )
    confidence: float = Field(
        0.95,
        gt=0.0,
        lt=1.0,
        title="Promotion: bootstrap confidence",
        description="Confidence level of the bootstrap interval.",
    )
    require_approval: bool = Field(
        False,
        title="Promotion: require approval",
        description="When the gate passes, pause the flow run for a person to approve or reject in the Prefect UI.",
    )
    approval_timeout_s: int = Field(
        24 * 3600,
        gt=0,
        title="Promotion: approval timeout (s)",
        description="How long a paused run waits for approval; then it is not promoted.",
    )
    harness_metric: str | None = Field(
        None,
        title="Promotion: lm-eval gate metric",
        description="Gate on an lm-eval score instead of `metric`: `TASK/METRIC` of a task in "
        "evaluation.harness_tasks (higher wins), e.g. `peftflow_heldout/peftflow_score`.",
    )
    guard_dataset: str | None = Field(
        None,
        title="Promotion: guard dataset",
        description="Dataset name(s) in `dataset_dir` kept apart as a general-ability guard set: the fine-tune's "
        "loss on it may not rise above the incumbent's (champion, else base) by more than guard_tolerance.",
    )
    guard_tolerance: float = Field(
        0.05, title="Promotion: guard tolerance", description="Largest allowed rise in guard-set loss (nats per token)."
    )
    guard_max_samples: int = Field(64, gt=0, title="Promotion: guard rows", description="Guard rows scored.")
    guard_on_manual: Literal["report", "rollback"] = Field(
        "report",
        title="Promotion: guard on a manual move",
        description="When `champion` is moved outside peftflow (MLflow UI or API, reported by `peftflow relay`) "
        "and the new champion fails the guard check: `report` only records it; `rollback` moves "
        "`champion` back to the previous one, with the reason.",
    )


class EvaluationConfig(Strict):
    """Held-out evaluation of base, fine-tune and champion."""

    metric: Literal["exact_match", "token_f1", "json_fields", "answer_accuracy", "function_call"] = Field(
        "token_f1",
        title="Evaluation: metric",
        description="Generation metric per example; the demo task uses json_fields, the image task "
        "answer_accuracy, the tool-calling task function_call.",
    )
    max_samples: int = Field(
        64, gt=0, title="Evaluation: rows generated", description="Held-out examples scored by generation."
    )
    max_new_tokens: int = Field(
        64, gt=0, title="Evaluation: max new tokens", description="Generation budget per example."
    )
    batch_size: int = Field(
        16, gt=0, title="Evaluation: batch size", description="Examples per generation / loss batch."
    )
    harness_tasks: list[str] = Field(
        default_factory=list,
        title="Evaluation: lm-eval tasks",
        description="lm-evaluation-harness tasks run on base, fine-tune and champion (HF backend; "
        "needs peftflow[harness]). `peftflow_heldout`: the held-out split above, "
        "written by peftflow as an lm-eval task (same rows, prompts and metric).",
    )
    harness_include: str | None = Field(
        None,
        title="Evaluation: lm-eval task folder",
        description="Directory of local lm-eval task YAMLs (offline, built-in tasks cannot download their data).",
    )


def default_registry_name(cfg) -> str:
    """A registered-model name that comes from the run itself (see RegistryConfig.name)."""
    if cfg.output_dir:
        parts = Path(cfg.output_dir).expanduser().parts
        parts = parts[-3:] if Path(cfg.output_dir).is_absolute() else parts
        raw = "-".join(p for p in parts if p not in ("/", ".", ".."))
    else:
        ref, suffix = STAGES[cfg.stage].named_after(cfg)
        model = f"{_short_name(ref)}{suffix}"
        raw = f"{model}-{'-'.join(cfg.dataset_names)}-{cfg.finetuning_type}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-.") or "peftflow"


def _short_name(ref: str) -> str:
    """builtin:NAME, models:/NAME@ALIAS or models:/NAME/N, org/name, /a/local/dir -> NAME, name, dir."""
    if ref.startswith("models:/"):
        return re.split(r"[@/]", ref.removeprefix("models:/"))[0]
    return ref.removeprefix("builtin:").rstrip("/").rsplit("/", 1)[-1]
