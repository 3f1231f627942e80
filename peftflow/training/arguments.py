"""How a config becomes HF TrainingArguments: precision (bf16 autocast where it is fast), gradient
checkpointing chosen by memory need, and the labels a run records for both."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.compute as pc
import torch
from transformers import TrainingArguments

from peftflow.config import RunConfig
from peftflow.methods import get_method
from peftflow.models import kernels
from peftflow.models.load import compute_dtype
from peftflow.run_dir import RunDir
from peftflow.training import memory

log = logging.getLogger("peftflow.train")


def training_arguments(cfg: RunConfig, output_dir: Path) -> TrainingArguments:
    """`cfg` with gradient_checkpointing already decided (resolve_gradient_checkpointing) where it was auto."""
    # transformers 5 has no warmup_ratio: warmup_steps takes a float in [0, 1) as a ratio.
    warmup = cfg.warmup_steps if cfg.warmup_steps else cfg.warmup_ratio
    bf16 = cfg.bf16 or bf16_autocast(cfg)
    return TrainingArguments(
        output_dir=str(RunDir(Path(output_dir)).checkpoints),
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        lr_scheduler_kwargs=dict(cfg.lr_scheduler_kwargs),
        warmup_steps=warmup,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim=cfg.optim,
        logging_steps=cfg.logging_steps,
        save_strategy=cfg.save_strategy,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        save_only_model=cfg.save_only_model,
        # evaluation during training: the held-out loss only (no logits kept), the best checkpoint
        eval_strategy=cfg.eval_strategy,
        eval_steps=cfg.eval_steps,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size or cfg.per_device_train_batch_size,
        prediction_loss_only=True,
        load_best_model_at_end=cfg.load_best_model_at_end,
        metric_for_best_model=cfg.metric_for_best_model,
        greater_is_better=cfg.greater_is_better,
        # a resume restores the early-stopping patience count (and the best metric, in the trainer state)
        restore_callback_states_from_checkpoint=True,
        seed=cfg.seed,
        bf16=bf16,  # autocast; the weights' dtype is base_dtype's
        # No GPU: say so, or under torchrun transformers reports world size 1 and rank 0 on every
        # rank (each one saves the adapter) and refuses bf16 autocast. MPS is left to fp32 runs.
        use_cpu=not torch.cuda.is_available() and (bf16 or not torch.backends.mps.is_available()),
        fp16=cfg.fp16,
        activation_checkpointing=cfg.gradient_checkpointing is True,  # transformers 5 name for it
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length",  # fewer pad tokens per batch
        disable_tqdm=True,
        ddp_timeout=cfg.ddp_timeout,
        use_liger_kernel=kernels.use_liger(cfg),
        # A stream: each process reads its own shards of it (accelerate shards a datasets IterableDataset
        # by its files, or takes every N-th batch), instead of the first process reading for all.
        accelerator_config={"dispatch_batches": False} if cfg.streaming else None,
    )


def bf16_autocast(cfg: RunConfig) -> bool:
    """cfg.bf16_autocast, or where unset: on when this machine runs bf16 matmuls fast."""
    if cfg.bf16_autocast is not None:
        return cfg.bf16_autocast
    if cfg.bf16 or cfg.fp16 or cfg.quantization_bit:
        return False
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return _cpu_has_fast_bf16()


def _cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: leave it to the config
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_gradient_checkpointing(cfg: RunConfig, base, train_set, method_supports: bool) -> tuple[RunConfig, str]:
    """cfg with gradient_checkpointing true or false (auto decided by memory need), and why."""
    longest = cfg.cutoff_len  # a stream's rows are not known beforehand: cutoff_len long, at most
    if not cfg.streaming:
        lengths = pc.list_value_length(train_set.data.column("input_ids"))
        longest = min(pc.max(lengths).as_py() or 0, cfg.cutoff_len)
    tokens = cfg.per_device_train_batch_size * (-(-longest // 8) * 8)  # the collator pads to a multiple of 8
    half = cfg.bf16 or cfg.fp16 or bf16_autocast(cfg)
    on, why = memory.choose_gradient_checkpointing(
        cfg.gradient_checkpointing, method_supports, base.config, tokens, 2 if half else 4
    )
    log.info("gradient checkpointing %s (%s)", "on" if on else "off", why)
    return cfg.model_copy(update={"gradient_checkpointing": on}), f"{'on' if on else 'off'} ({why})"


def base_dtype(cfg: RunConfig) -> torch.dtype:
    """The dtype the base is loaded in to train. Under bf16 autocast a frozen base is held in bf16:
    half the weight memory, and autocast casts no weight on any matmul; what trains stays fp32
    (run.fp32_trainable). A base whose weights train (or are rewritten at init) keeps compute_dtype."""
    frozen = get_method(cfg).frozen_base(cfg)
    if frozen and bf16_autocast(cfg) and not cfg.quantization_bit and not cfg.compute_dtype:
        return torch.bfloat16
    return compute_dtype(cfg)


def compute_label(cfg: RunConfig, dtype: torch.dtype) -> str:
    """What the matmuls ran in, e.g. `bfloat16 base, float32 trainable + bf16 autocast` or
    `nf4 weights, float32 compute`; `dtype` is the base's (base_dtype)."""
    name = str(dtype).removeprefix("torch.")
    if cfg.quantization_bit:
        kind = cfg.quantization_type if cfg.quantization_bit == 4 else "int8"
        return f"{kind} weights, {name} compute"
    if not bf16_autocast(cfg):
        return name
    return f"{name} base, float32 trainable + bf16 autocast" if dtype == torch.bfloat16 else f"{name} + bf16 autocast"
