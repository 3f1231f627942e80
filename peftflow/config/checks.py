"""Every cross-field check of a run config, in one place.

They run as RunConfig's validators, so YAML, deployment JSON, the dashboard form and Python all get
them. A check never asks whether a key was *written*: a deployment stores the config as JSON with
every field filled in, and the worker validates that again. "Given" means "differs from the
default" (`given`), which survives the round trip.
"""

from __future__ import annotations

from typing import Any

from peftflow.config.checkpoint_keys import EVAL_METRICS
from peftflow.methods import METHODS, names_with
from peftflow.redact import is_secret_key
from peftflow.stages import STAGES


def given(cfg, key: str) -> bool:
    """The field holds something other than its default."""
    return getattr(cfg, key) != type(cfg).model_fields[key].get_default(call_default_factory=True)


def refuse_credentials(raw: Any, prefix: str = "") -> None:
    """A key that looks like a credential, at any depth. The value is never echoed: it would land
    in logs, Prefect parameters and MLflow params."""
    if not isinstance(raw, dict):
        return
    for k, v in raw.items():
        key = f"{prefix}{k}"
        if is_secret_key(str(k)):
            raise ValueError(
                f"key '{key}' looks like a credential; the run config is shown in the Prefect UI and "
                "logged to MLflow, so credentials come from environment variables (HF_TOKEN, AWS_*, "
                "MLFLOW_TRACKING_*) or Prefect Secret blocks, never from the config"
            )
        refuse_credentials(v, key + ".")


def check_run(cfg) -> None:
    """Raise ValueError naming the keys of the first combination that cannot run."""
    if cfg.bf16 and cfg.fp16:
        raise ValueError("bf16 and fp16 are both true; choose one")
    if cfg.bf16_autocast and cfg.fp16:
        raise ValueError("bf16_autocast and fp16 are both true; choose one")
    if cfg.warmup_ratio and cfg.warmup_steps:
        raise ValueError("warmup_ratio and warmup_steps are both set; keep one")
    if cfg.val_size >= 1 and cfg.val_size != int(cfg.val_size):
        raise ValueError("val_size must be a fraction below 1 or a whole number of rows")
    if not cfg.dataset_names:
        raise ValueError("dataset names no dataset")
    if cfg.train_on_prompt and cfg.mask_history:
        raise ValueError(
            "train_on_prompt and mask_history are both true; mask_history masks answers that "
            "train_on_prompt would learn, choose one"
        )
    if (
        cfg.freeze_multi_modal_projector is not None
        and given(cfg, "train_projector")
        and cfg.train_projector == cfg.freeze_multi_modal_projector
    ):
        raise ValueError("train_projector and freeze_multi_modal_projector disagree; keep one")
    check_mixing(cfg)
    check_streaming(cfg)
    check_method(cfg)
    check_stage(cfg)
    check_evaluation(cfg)
    check_checkpoints(cfg)
    check_serving(cfg)


def check_mixing(cfg) -> None:
    """interleave_probs: interleaving only, one per dataset, a distribution (datasets raises otherwise)."""
    if cfg.train_dataset and cfg.mix_strategy != "concat":
        raise ValueError("mix_strategy: a v1 train_dataset mixes its datasets by their own size and weight")
    probs = cfg.interleave_probs
    if probs is None:
        return
    if cfg.mix_strategy == "concat":
        raise ValueError("interleave_probs is read only with mix_strategy interleave_under, interleave_over or once")
    names = cfg.dataset_names
    if len(probs) != len(names):
        raise ValueError(f"interleave_probs has {len(probs)} values for {len(names)} datasets ({', '.join(names)})")
    if any(p < 0 for p in probs) or abs(sum(probs) - 1) > 1e-6:
        raise ValueError(f"interleave_probs must be non-negative and sum to 1 (they sum to {sum(probs):g})")


def check_streaming(cfg) -> None:
    """streaming (LLaMA-Factory's rules, and what a stream of rows cannot do) and buffer_size without it."""
    if not cfg.streaming:
        if given(cfg, "buffer_size"):
            raise ValueError("buffer_size is the streaming shuffle buffer; it is read only with streaming: true")
        return
    stage = STAGES[cfg.stage]
    streamers = " or ".join(s.name for s in STAGES.values() if s.streams)
    refusal = next(
        (
            why
            for wrong, why in (
                (cfg.max_steps <= 0, "needs max_steps > 0: a stream has no length to count epochs by"),
                (cfg.max_samples is not None, "max_samples: a stream reads every row; drop max_samples"),
                (
                    0 < cfg.val_size < 1,
                    f"val_size {cfg.val_size}: a stream's size is unknown, so the held-out rows are a whole "
                    "number (its first val_size rows)",
                ),
                (cfg.packing or cfg.neat_packing, "packing / neat_packing: streamed rows are not packed"),
                (
                    cfg.mix_strategy != "concat",
                    f"mix_strategy {cfg.mix_strategy}: streamed datasets are read one after another (concat)",
                ),
                (cfg.train_dataset is not None, "train_dataset: a v1 dataset is resampled as a whole; use dataset"),
                (
                    stage.row_kind == "text",
                    f"stage: {stage.name} concatenates all its texts and cuts them into blocks; only stage: "
                    f"{streamers} streams",
                ),
                (
                    not stage.streams,
                    f"stage: {stage.name} reads its training rows as a whole; only stage: {streamers} streams",
                ),
            )
            if wrong
        ),
        None,
    )
    if refusal:
        raise ValueError(f"streaming: {refusal}")


def check_method(cfg) -> None:
    """Method x option checks, from the method's traits, its own check and the options of the others."""
    method = METHODS[cfg.finetuning_type]
    name = f"finetuning_type '{method.name}'"
    if cfg.gradient_checkpointing is True and not method.traits.gradient_checkpointing:
        raise ValueError(f"gradient_checkpointing: true does not work with {name}; set it to false")
    if cfg.merge and not method.mergeable:
        raise ValueError(
            f"merge: true but {name} cannot be merged into the base; drop merge "
            f"(the adapter is published with its base)"
        )
    if cfg.quantization_bit and not method.traits.supports_kbit:
        raise ValueError(
            f"quantization_bit: {cfg.quantization_bit} needs a method that trains on a k-bit "
            f"base; {name} does not (k-bit methods: {', '.join(names_with('supports_kbit'))})"
        )
    for other in METHODS.values():
        foreign = [k for k in other.options if k not in method.options and given(cfg, k)]
        if foreign:
            verb = "applies" if len(foreign) == 1 else "apply"
            raise ValueError(f"{', '.join(foreign)} only {verb} to finetuning_type '{other.name}', not {name}")
    method.check(cfg)


def check_stage(cfg) -> None:
    """Stage x option checks: another stage's options refused, then the stage's own check."""
    stage = STAGES[cfg.stage]
    for other in STAGES.values():
        foreign = [k for k in other.options if k not in stage.options and given(cfg, k)]
        if foreign:
            # a key the preference stages share names each stage that reads it
            readers = [s.name for s in STAGES.values() if foreign[0] in s.options]
            raise ValueError(f"{', '.join(foreign)} only apply to stage: {' or '.join(readers)}")
    check_packing(cfg, stage)
    stage.check(cfg)


def check_evaluation(cfg) -> None:
    """Evaluation during training: what transformers would refuse only once training starts, and the
    keys that would do nothing without it."""
    if cfg.eval_strategy == "no":
        needs = ["eval_steps", "per_device_eval_batch_size", "metric_for_best_model", "greater_is_better"]
        needs += ["load_best_model_at_end", "early_stopping_steps"]
        unread = [k for k in needs if given(cfg, k)] + (["save_strategy"] if cfg.save_strategy == "best" else [])
        if unread:
            raise ValueError(f"{unread[0]} needs evaluation during training; set eval_strategy: steps or epoch")
        return
    if not cfg.val_size:
        raise ValueError(
            f"eval_strategy: {cfg.eval_strategy} evaluates the held-out rows; val_size is 0, so there are none"
        )
    if cfg.eval_steps is not None and cfg.eval_strategy != "steps":
        raise ValueError(f"eval_steps applies to eval_strategy: steps (got {cfg.eval_strategy})")
    if cfg.metric_for_best_model is not None and cfg.metric_for_best_model not in EVAL_METRICS:
        raise ValueError(
            f"metric_for_best_model: {cfg.metric_for_best_model}: the only metric computed during training is "
            "eval_loss (loss)"
        )
    if cfg.greater_is_better is not None and cfg.metric_for_best_model is None and not cfg.load_best_model_at_end:
        raise ValueError("greater_is_better needs metric_for_best_model")
    if cfg.early_stopping_steps and cfg.metric_for_best_model is None:
        raise ValueError("early_stopping_steps needs metric_for_best_model (e.g. eval_loss), as in LLaMA-Factory")
    if cfg.save_strategy == "best" and cfg.metric_for_best_model is None and not cfg.load_best_model_at_end:
        raise ValueError("save_strategy: best needs metric_for_best_model (e.g. eval_loss)")
    if cfg.load_best_model_at_end and cfg.save_strategy != "best":
        if cfg.save_strategy != cfg.eval_strategy:
            raise ValueError(
                f"load_best_model_at_end needs save_strategy equal to eval_strategy ({cfg.eval_strategy}) or best "
                f"(got save_strategy: {cfg.save_strategy})"
            )
        eval_steps = cfg.eval_steps or cfg.logging_steps
        if cfg.eval_strategy == "steps" and cfg.save_steps % eval_steps:
            raise ValueError(
                f"load_best_model_at_end: save_steps ({cfg.save_steps}) must be a multiple of eval_steps ({eval_steps})"
            )


def check_checkpoints(cfg) -> None:
    """Checkpoint keys that would do nothing, or resume from nothing."""
    if cfg.save_strategy != "steps" and given(cfg, "save_steps"):
        raise ValueError(f"save_steps applies to save_strategy: steps (got {cfg.save_strategy})")
    if cfg.save_strategy == "no" and cfg.save_only_model:
        raise ValueError("save_only_model: true, but save_strategy: no saves no checkpoint")
    if isinstance(cfg.resume_from_checkpoint, str) and not cfg.resume_from_checkpoint.strip():
        raise ValueError("resume_from_checkpoint: an empty path; leave it empty or give a checkpoint folder")
    if cfg.resume_from_checkpoint is True and (cfg.save_strategy == "no" or cfg.save_only_model):
        why = (
            "save_strategy: no saves none"
            if cfg.save_strategy == "no"
            else "save_only_model: true saves no optimizer state"
        )
        raise ValueError(f"resume_from_checkpoint: true resumes from the run's own checkpoints, and {why}")


def check_packing(cfg, stage) -> None:
    """packing / neat_packing where the stage packs: sft packs whole rows, pt always cuts its text into blocks."""
    packers = " or ".join(s.name for s in STAGES.values() if s.packs_rows)
    if cfg.neat_packing and not stage.packs_rows:
        raise ValueError(f"neat_packing: packing without cross-attention is for stage: {packers} only; drop it")
    if cfg.packing and not stage.packs_rows and stage.row_kind != "text":
        raise ValueError(f"packing: stage: {stage.name} trains its rows one by one; packing is for stage: {packers}")
    family = METHODS[cfg.finetuning_type].traits.family
    if (cfg.packing or cfg.neat_packing) and stage.packs_rows and family == "prompt_learning":
        key = "neat_packing" if cfg.neat_packing else "packing"
        raise ValueError(
            f"{key}: finetuning_type '{cfg.finetuning_type}' puts virtual tokens before each sequence, which "
            "would span the packed rows; use lora, ia3 or full"
        )
    if cfg.packing is False and stage.row_kind == "text":
        raise ValueError(
            f"packing: false: stage: {stage.name} always concatenates its texts and cuts them into cutoff_len "
            "blocks; leave packing empty"
        )


def check_serving(cfg) -> None:
    """The lm-eval gate names a task that runs; GGUF needs a merged model; a vLLM-ready adapter is plain LoRA."""
    harness_metric = cfg.promotion.harness_metric
    if harness_metric and harness_metric.partition("/")[0] not in cfg.evaluation.harness_tasks:
        raise ValueError(
            f"promotion.harness_metric {harness_metric}: its task is not in evaluation.harness_tasks "
            f"({', '.join(cfg.evaluation.harness_tasks) or 'none'})"
        )
    if cfg.registry.gguf_outtype and not cfg.should_merge:
        raise ValueError("registry.gguf_outtype: GGUF export needs a merged model; this run publishes an adapter")
    if not cfg.registry.vllm_ready or cfg.should_merge:
        return
    if cfg.finetuning_type != "lora" or cfg.use_dora:
        what = "use_dora" if cfg.finetuning_type == "lora" else f"finetuning_type '{cfg.finetuning_type}'"
        raise ValueError(f"registry.vllm_ready: vLLM serves plain LoRA adapters only, not {what}")
    if cfg.additional_target:
        raise ValueError(
            "registry.vllm_ready: additional_target is saved as modules_to_save, which vLLM refuses; drop it"
        )
