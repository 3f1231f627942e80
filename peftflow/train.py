"""Train an adapter with the HF Trainer: checkpoints, resume, metrics. Path in, path out."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from datasets import load_from_disk
from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                          TrainerCallback, TrainingArguments)
from transformers.trainer_utils import get_last_checkpoint

from peftflow.config import RunConfig
from peftflow.methods import get_method

log = logging.getLogger("peftflow.train")

# After a resume the first logged loss must be near the last one logged before the crash;
# a run that silently restarted from scratch shows the untrained loss instead.
RESUME_LOSS_TOLERANCE = 0.5


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
    optimizer_used: str = ""     # what actually ran: e.g. paged optimizers run unpaged on CPU

    def metrics(self) -> dict[str, float]:
        return {"train_loss": self.final_loss, "train_steps": self.steps, "train_seconds": self.train_seconds,
                "supervised_tokens_per_s": self.tokens_per_second, "trainable_params": self.trainable_params,
                "total_params": self.total_params}


class _SupervisedTokenTrainer(Trainer):
    """Counts label tokens (the work that trains) and reports supervised tokens/s in each log."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.supervised_tokens = 0
        self._last_log = (time.perf_counter(), 0)

    def compute_loss(self, model, inputs, *args, **kwargs):
        self.supervised_tokens += int((inputs["labels"][:, 1:] != -100).sum())
        return super().compute_loss(model, inputs, *args, **kwargs)

    def log(self, logs, *args, **kwargs):
        now, seen = time.perf_counter(), self.supervised_tokens
        t0, seen0 = self._last_log
        if "loss" in logs and now > t0:
            logs["supervised_tokens_per_s"] = round((seen - seen0) / (now - t0), 1)
        self._last_log = (now, seen)
        super().log(logs, *args, **kwargs)


class _DistillTrainer(_SupervisedTokenTrainer):
    """The student's loss is the distillation loss against a frozen teacher (or its cached top-k)."""

    def __init__(self, *args, teacher=None, cache=None, settings=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher, self.cache, self.settings = teacher, cache, settings
        self._kd = [0.0, 0.0, 0]  # kl sum, ce sum, steps since the last log

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        from peftflow.methods.distill import distill_step

        self.supervised_tokens += int((inputs["labels"][:, 1:] != -100).sum())
        out = distill_step(model, self.teacher, inputs, self.settings, self.cache)
        self._kd = [self._kd[0] + float(out["kl"]), self._kd[1] + float(out["ce"]), self._kd[2] + 1]
        return (out["loss"], None) if return_outputs else out["loss"]

    def log(self, logs, *args, **kwargs):
        kl, ce, n = self._kd
        if "loss" in logs and n:
            logs["kd_kl"], logs["kd_ce"] = round(kl / n, 5), round(ce / n, 5)
            self._kd = [0.0, 0.0, 0]
        super().log(logs, *args, **kwargs)


class MetricsCallback(TrainerCallback):
    """Forwards every logged dict to `sink(step, metrics)`: MLflow, a progress bar, a test."""

    def __init__(self, sink: Callable[[int, dict[str, float]], None]):
        self.sink = sink

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.sink(state.global_step, {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})


def training_arguments(cfg: RunConfig, output_dir: Path) -> TrainingArguments:
    # transformers 5 has no warmup_ratio: warmup_steps takes a float in [0, 1) as a ratio.
    warmup = cfg.warmup_steps if cfg.warmup_steps else cfg.warmup_ratio
    return TrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=warmup,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim=cfg.optim,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        bf16=cfg.bf16,
        fp16=cfg.fp16,
        activation_checkpointing=cfg.gradient_checkpointing,  # transformers 5 name for it
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length",  # fewer pad tokens per batch
        disable_tqdm=True,
    )


def compute_dtype(cfg: RunConfig) -> torch.dtype:
    if cfg.compute_dtype:
        return getattr(torch, cfg.compute_dtype)
    return torch.bfloat16 if cfg.bf16 else torch.float16 if cfg.fp16 else torch.float32


def load_base(model_path: str, cfg: RunConfig):
    dtype = compute_dtype(cfg)
    if not cfg.quantization_bit:
        return AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=cfg.quantization_bit == 4, load_in_8bit=cfg.quantization_bit == 8,
        bnb_4bit_quant_type=cfg.quantization_type, bnb_4bit_use_double_quant=cfg.double_quantization,
        bnb_4bit_compute_dtype=dtype)
    device_map = None if torch.cuda.is_available() else {"": "cpu"}
    return AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, quantization_config=quant,
                                                device_map=device_map, trust_remote_code=cfg.trust_remote_code)


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


def _distill_kwargs(cfg: RunConfig, teacher_path: str, data_path: str, train_set):
    """Teacher, KD settings and (optional) top-k cache keyed by teacher, data and k."""
    from peftflow.methods.distill import KDSettings, load_teacher, teacher_cache
    from peftflow.models import fingerprint_dir
    from peftflow.paths import cache_dir

    teacher = load_teacher(teacher_path)
    settings = KDSettings(cfg.kd_temperature, cfg.kd_ratio, cfg.kd_direction, cfg.kd_chunk_size)
    cache = None
    if cfg.teacher_topk:
        name = f"{fingerprint_dir(Path(teacher_path))}-{Path(data_path).name}-k{cfg.teacher_topk}.safetensors"
        cache = teacher_cache(teacher, train_set, cfg.teacher_topk, cache_dir("teacher") / name)
        teacher = None  # the cache replaces it
    return dict(teacher=teacher, cache=cache, settings=settings)


def run(cfg: RunConfig, model_path: str, data_path: str, output_dir: str | Path,
        callbacks: tuple[TrainerCallback, ...] = (), teacher_path: str | None = None) -> TrainResult:
    """Train `cfg`'s method on the prepared data; resume from the last checkpoint in output_dir.
    With stage: distill, `teacher_path` is the teacher whose distribution the student learns."""
    output_dir = Path(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    method = get_method(cfg)
    model = method.build(load_base(model_path, cfg), cfg)
    init_dir = method.before_train(model, output_dir)
    trainable, total = _parameter_counts(model)
    train_set = load_from_disk(str(Path(data_path) / "train")).select_columns(["input_ids", "labels"])

    args = training_arguments(cfg, output_dir)
    trainer_cls, extra = _SupervisedTokenTrainer, {}
    if cfg.stage == "distill":
        trainer_cls, extra = _DistillTrainer, _distill_kwargs(cfg, teacher_path, data_path, train_set)
        # Rows carry their index so a batch can find its cached teacher outputs.
        train_set = train_set.add_column("row_id", list(range(len(train_set))))
    trainer = trainer_cls(
        model=model, args=args, train_dataset=train_set,
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, pad_to_multiple_of=8),
        callbacks=list(callbacks), **extra,
    )
    checkpoint = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    resumed_from = _loss_before(checkpoint) if checkpoint else None
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - start
    history = tuple((h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h)
    if resumed_from:
        _check_resume(resumed_from, history)

    adapter_dir = output_dir / "adapter"
    method.save(model, adapter_dir, init_dir)
    tokenizer.save_pretrained(adapter_dir)
    final_loss = history[-1][1] if history else float(result.training_loss)
    out = TrainResult(
        adapter_dir=str(adapter_dir), final_loss=final_loss, steps=trainer.state.global_step,
        train_seconds=round(seconds, 2), supervised_tokens=trainer.supervised_tokens,
        tokens_per_second=round(trainer.supervised_tokens / seconds, 1) if seconds else 0.0,
        trainable_params=trainable, total_params=total,
        resumed_from_step=resumed_from[0] if resumed_from else None, loss_history=history,
        method=method.name, optimizer_used=optimizer_used(cfg, trainer.optimizer),
    )
    (output_dir / "train_result.json").write_text(json.dumps(asdict(out), indent=1))
    return out


def _loss_before(checkpoint: str) -> tuple[int, float] | None:
    """(step, last logged loss) saved with a checkpoint."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    losses = [(h["step"], h["loss"]) for h in state["log_history"] if "loss" in h]
    return losses[-1] if losses else (state["global_step"], math.nan)


def _check_resume(before: tuple[int, float], history: tuple[tuple[int, float], ...]) -> None:
    step, loss = before
    after = [(s, l) for s, l in history if s > step]
    if not after or math.isnan(loss):
        return
    first = after[0][1]
    if first > loss + RESUME_LOSS_TOLERANCE * max(loss, 1.0):
        raise RuntimeError(f"resume from step {step} looks like a restart from scratch: "
                           f"loss {loss:.3f} before, {first:.3f} after")
    log.info("resumed at step %d: loss %.3f before, %.3f after", step, loss, first)
