"""Train a method on prepared data with the HF Trainer: one call, path in, path out.

`run` loads the base, builds the method, trains (resuming from the last complete checkpoint in
the output dir), saves the adapter and `train_result.json`, and returns a `TrainResult`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from datasets import load_from_disk
from peft.helpers import disable_input_dtype_casting
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    PrinterCallback,
    TrainerCallback,
    set_seed,
)

from peftflow.config import RunConfig
from peftflow.data.prepare import STATS_FILE, dataset_sources
from peftflow.data.streaming import training_stream
from peftflow.methods import get_method
from peftflow.models import vision
from peftflow.models.load import compute_dtype, load_base
from peftflow.run_dir import RunDir
from peftflow.store import open_store, run_key
from peftflow.training import memory
from peftflow.training.arguments import base_dtype, compute_label, resolve_gradient_checkpointing, training_arguments
from peftflow.training.collator import packed_collator
from peftflow.training.during import early_stopping, eval_rows, evaluated
from peftflow.training.lora_dropout import seeded_lora_dropout
from peftflow.training.resume import check_resume, first_loss, loss_before, resumes, starting_checkpoint
from peftflow.training.stored import StoreCheckpoints, fetch_checkpoint
from peftflow.training.trainer import FirstStep, LogLastStep, SupervisedTokenTrainer, TrainingProgress

log = logging.getLogger("peftflow.train")


@dataclass(frozen=True)
class TrainResult:
    adapter_dir: str
    final_loss: float
    steps: int
    train_seconds: float
    supervised_tokens: int
    tokens_per_second: float
    trainable_params: int
    total_params: int
    resumed_from_step: int | None
    loss_history: tuple[tuple[int, float], ...]
    method: str = "lora"
    optimizer_used: str = ""  # what actually ran: e.g. paged optimizers run unpaged on CPU
    # Vision-language models: trainable parameters per part (vision_tower, projector, lora, other).
    trainable_by_part: dict[str, int] = field(default_factory=dict)
    compute: str = ""  # compute_label: the base's dtype, plus "+ bf16 autocast" where the matmuls ran in bf16
    gradient_checkpointing: str = ""  # "on (why)" / "off (why)"
    footprint_mb: float = 0.0  # the base model's weights as loaded for training (4-bit for QLoRA)
    peak_memory_mb: float = 0.0  # peak CUDA memory on a GPU, else peak process RSS, during this run
    # Evaluation during training (eval_strategy; peftflow/training/during.py): the (step, eval_loss)
    # curve, the best step by `best_metric_name` (with load_best_model_at_end, the weights saved in
    # adapter_dir), and the step early stopping ended the run at, and why.
    eval_history: tuple[tuple[int, float], ...] = ()
    best_metric_name: str = ""
    best_step: int | None = None
    best_metric: float | None = None
    stopped_early_at: int | None = None
    stop_reason: str = ""

    def metrics(self) -> dict[str, float]:
        # `final_loss`, not `train_loss`: that name is the Trainer's mean over the run, logged at the last step.
        return {
            "final_loss": self.final_loss,
            "train_steps": self.steps,
            "train_seconds": self.train_seconds,
            "supervised_tokens_per_s": self.tokens_per_second,
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "seconds_per_step": round(self.train_seconds / max(self.steps, 1), 3),
            "model_footprint_mb": self.footprint_mb,
            "peak_memory_mb": self.peak_memory_mb,
            **{f"trainable_params.{part}": n for part, n in self.trainable_by_part.items()},
            **(
                {"best_step": self.best_step, f"best_{self.best_metric_name}": self.best_metric}
                if self.best_step
                else {}
            ),
            **({"stopped_early_at_step": self.stopped_early_at} if self.stopped_early_at else {}),
        }


def run(
    cfg: RunConfig,
    model_path: str,
    data_path: str,
    output_dir: str | Path,
    callbacks: tuple[TrainerCallback, ...] = (),
    trainer_factory=None,
) -> TrainResult:
    """Train `cfg`'s method on the prepared data; resume from the last checkpoint in output_dir.
    `trainer_factory` is the stage's (peftflow.stages.workflow.TrainerFactory); None: the stock
    SupervisedTokenTrainer."""
    output_dir = Path(output_dir)
    callbacks = (*callbacks, *_store_checkpoints(cfg, output_dir), *early_stopping(cfg))
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
    set_seed(cfg.seed)  # adapter init: the same weights in every process and every run
    method = get_method(cfg)
    memory.reset_peak()
    train_set = _training_rows(cfg, model_path, data_path)
    dtype = base_dtype(cfg)
    base = load_base(model_path, cfg, dtype)
    footprint_mb = round(base.get_memory_footprint() / 2**20, 1)
    cfg, checkpointing = resolve_gradient_checkpointing(cfg, base, train_set, method.traits.gradient_checkpointing)
    model = method.build(base, cfg)
    if dtype != compute_dtype(cfg):  # a frozen base held in bf16: what trains keeps fp32 master weights
        fp32_trainable(model)
    init_dir = method.before_train(model, output_dir)
    processor = (
        AutoProcessor.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
        if vision.is_vision_language(model_path)
        else None
    )
    trainer = _trainer(cfg, model, tokenizer, processor, train_set, data_path, output_dir, callbacks, trainer_factory)
    start = time.perf_counter()
    history, resumed_from, mean_loss = _train(trainer, cfg)
    seconds = time.perf_counter() - start
    out = TrainResult(
        adapter_dir=str(RunDir(output_dir).adapter),
        final_loss=history[-1][1] if history else mean_loss,
        steps=trainer.state.global_step,
        train_seconds=round(seconds, 2),
        supervised_tokens=trainer.supervised_tokens,
        tokens_per_second=round(trainer.supervised_tokens / seconds, 1) if seconds else 0.0,
        **dict(zip(("trainable_params", "total_params"), _parameter_counts(model))),
        resumed_from_step=resumed_from,
        loss_history=history,
        method=method.name,
        optimizer_used=optimizer_used(cfg, trainer.optimizer),
        trainable_by_part=vision.trainable_by_part(model) if processor else {},
        compute=compute_label(cfg, dtype),
        gradient_checkpointing=checkpointing,
        footprint_mb=footprint_mb,
        peak_memory_mb=round(memory.peak_mb(), 1),
        **asdict(evaluated(trainer)),
    )
    if trainer.is_world_process_zero():  # under torchrun, one process writes the results
        method.save(model, out.adapter_dir, init_dir)
        # A vision-language model ships its processor (tokenizer + image processor) with the adapter.
        (processor or tokenizer).save_pretrained(out.adapter_dir)
        RunDir(output_dir).train_result.write_text(json.dumps(asdict(out), indent=1))
    return out


def _training_rows(cfg: RunConfig, model_path: str, data_path: str):
    """The prepared training split, or with `streaming` the stream of training rows (data/streaming.py),
    less the held-out rows prepare_dataset wrote."""
    if not cfg.streaming:
        return load_from_disk(str(Path(data_path) / "train"))
    held_out = json.loads((Path(data_path) / STATS_FILE).read_text())["held_out"]
    return training_stream(cfg, dataset_sources(cfg), model_path, held_out)


def _store_checkpoints(cfg: RunConfig, output_dir: Path) -> tuple[TrainerCallback, ...]:
    """With a run store: fetch its newest sealed checkpoint (in a single process; under torchrun
    the launcher did, before the ranks start) and upload each new one as it is saved."""
    store = open_store(cfg.storage)
    if store is None or not resumes(cfg):  # checkpoints that cannot resume are not stored either
        return ()
    key = run_key(cfg.registry.name, output_dir)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        fetch_checkpoint(store, key, RunDir(output_dir).checkpoints)
    return (StoreCheckpoints(store, key),)


def _trainer(cfg, model, tokenizer, processor, train_set, data_path, output_dir, callbacks, trainer_factory):
    """The Trainer for this run: the stage's (its factory's), images for a VLM."""
    multimodal = "images" in train_set.column_names
    # the rows the model reads: a preference pair's rejected side too, a KTO row's tag
    stage_columns = ("rejected_input_ids", "rejected_labels", "kto_tag", "images", "position_ids")
    extra_columns = [c for c in stage_columns if c in train_set.column_names]
    train_set = train_set.select_columns(["input_ids", "labels", *extra_columns])
    eval_set = eval_rows(cfg, data_path)  # eval_strategy: the held-out rows, read as the training rows are
    if eval_set is not None:
        if "position_ids" in extra_columns:  # held-out rows stay unpacked: each its own packed row
            eval_set = eval_set.map(lambda row: {"position_ids": list(range(len(row["input_ids"])))})
        eval_set = eval_set.select_columns(["input_ids", "labels", *extra_columns])
    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, pad_to_multiple_of=8)
    if "position_ids" in extra_columns:  # packed rows (data/packing.py)
        collator = packed_collator(tokenizer, model, cfg.neat_packing)
        if not cfg.neat_packing:
            log.warning(
                "packing: true lets each packed row attend to the rows packed before it (LLaMA-Factory's packing); "
                "neat_packing: true packs without that cross-attention"
            )
    if multimodal:
        collator = vision.VisionCollator(collator, processor.image_processor)
    trainer_cls, extra = SupervisedTokenTrainer, {}
    if trainer_factory is not None:
        trainer_cls, extra, train_set = trainer_factory(cfg, data_path, train_set)
    if not any(isinstance(c, TrainingProgress) for c in callbacks):
        callbacks = (*callbacks, TrainingProgress())
    trainer = trainer_cls(
        model=model,
        args=training_arguments(cfg, output_dir),
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collator,
        callbacks=[LogLastStep(), *callbacks, FirstStep()],
        **extra,
    )
    # disable_tqdm makes the Trainer print each log as a dict of strings; TrainingProgress logs a line instead.
    trainer.remove_callback(PrinterCallback)
    return trainer


def _train(trainer, cfg: RunConfig) -> tuple[tuple[tuple[int, float], ...], int | None, float]:
    """Train, resuming from the last complete checkpoint, or `resume_from_checkpoint` (checked to
    continue, not restart); returns the (step, loss) log, the checkpoint step resumed from, and the
    Trainer's mean training loss."""
    checkpoint = starting_checkpoint(cfg, Path(trainer.args.output_dir), set_aside=trainer.is_world_process_zero())
    before = loss_before(checkpoint) if checkpoint else None
    first = first_loss(checkpoint) if checkpoint else None
    # Under autocast, peft's LoRA layers would cast each bf16 input up to their fp32 weights and
    # autocast would cast it straight back: two copies of every adapted layer's input per pass.
    # (Only LoRA layers have the switch; peft's context manager fails on the others.)
    lora_casts = any(hasattr(m, "cast_input_dtype_enabled") for m in trainer.model.modules())
    with (
        disable_input_dtype_casting(trainer.model) if trainer.args.bf16 and lora_casts else nullcontext(),
        seeded_lora_dropout(trainer.model),  # LoRA dropout keeps a seed for the backward pass, not a copy
    ):
        result = trainer.train(resume_from_checkpoint=checkpoint)
    # Under autocast accelerate wrapped model.forward in it; a caller using the model afterwards gets fp32 back.
    trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    history = tuple((h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h)
    if before:
        first_step = next(c.step for c in trainer.callback_handler.callbacks if isinstance(c, FirstStep))
        check_resume(before, history, first, first_step)
    return history, before[0] if before else None, float(result.training_loss)


def fp32_trainable(model) -> None:
    """Trainable parameters in fp32 (optimizer master weights) whatever the base's dtype: peft
    upcasts its adapters itself, not a trained copy of a base module (modules_to_save)."""
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()


def optimizer_used(cfg: RunConfig, optimizer) -> str:
    """The optimizer that ran, e.g. `bitsandbytes.AdamW 8-bit paged`. bitsandbytes' paged
    optimizers page only on CUDA; on CPU they run unpaged (with a warning), which this records."""
    inner = getattr(optimizer, "optimizer", optimizer)
    name = f"{type(inner).__module__.split('.')[0]}.{type(inner).__name__}"
    bits = getattr(getattr(inner, "args", None), "optim_bits", None)
    if bits:
        name += f" {bits}-bit"
    if cfg.optim.startswith("paged_"):
        name += " paged" if torch.cuda.is_available() else f" unpaged ({cfg.optim} requested; paging needs CUDA)"
    return name


def _parameter_counts(model) -> tuple[int, int]:
    if hasattr(model, "get_nb_trainable_parameters"):  # peft counts what its adapters add
        return model.get_nb_trainable_parameters()
    return (sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters()))
