"""Train an adapter with the HF Trainer: checkpoints, resume, metrics. Path in, path out."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow.compute as pc
import torch
from datasets import load_from_disk
from transformers import (AutoModelForCausalLM, AutoProcessor, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                          TrainerCallback, TrainingArguments, set_seed)
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import get_last_checkpoint

from peftflow import memory, vision
from peftflow.config import RunConfig
from peftflow.lm_loss import supervised_ce, supports_chunked_loss
from peftflow.methods import get_method

log = logging.getLogger("peftflow.train")

# After a resume the first logged loss must be near the last one logged before the crash;
# a run that silently restarted from scratch shows the untrained loss instead.
RESUME_LOSS_TOLERANCE = 0.5
# ... and it must not give back most of the progress made before the checkpoint (a restart that
# reloads the step counter but not the adapter weights: the known PEFT trap).
RESUME_PROGRESS_KEPT = 0.5
# What a checkpoint needs to resume exactly: trainer_state.json is written last, so a checkpoint
# killed mid-save lacks it (or holds half of it).
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")


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
    # Vision-language models: trainable parameters per part (vision_tower, projector, lora, other).
    trainable_by_part: dict[str, int] = field(default_factory=dict)
    compute: str = ""            # weights dtype, plus "+ bf16 autocast" where the matmuls ran in bf16
    gradient_checkpointing: str = ""  # "on (why)" / "off (why)"
    footprint_mb: float = 0.0    # the base model's weights as loaded for training (4-bit for QLoRA)
    peak_memory_mb: float = 0.0  # peak CUDA memory on a GPU, else peak process RSS, during this run

    def metrics(self) -> dict[str, float]:
        return {"train_loss": self.final_loss, "train_steps": self.steps, "train_seconds": self.train_seconds,
                "supervised_tokens_per_s": self.tokens_per_second, "trainable_params": self.trainable_params,
                "total_params": self.total_params, "seconds_per_step": round(self.train_seconds / max(self.steps, 1), 3),
                "model_footprint_mb": self.footprint_mb, "peak_memory_mb": self.peak_memory_mb,
                **{f"trainable_params.{part}": n for part, n in self.trainable_by_part.items()}}


class _SupervisedTokenTrainer(Trainer):
    """Counts label tokens (the work that trains) and reports supervised tokens/s in each log.
    The loss is the stock one, computed over supervised positions only (peftflow.lm_loss)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.supervised_tokens = 0
        self._last_log = (time.perf_counter(), 0)
        # Under DDP the forward must go through the wrapper (gradient sync): stock loss there.
        self.chunked_loss = supports_chunked_loss(self.model) and self.args.world_size == 1

    def _get_train_sampler(self, train_dataset=None):
        # Length grouping over the *global* batch: N processes x batch B then see the same
        # examples per step as one process with batch N x B (the sampler's order is seeded).
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler) and self.args.world_size > 1:
            sampler.batch_size *= self.args.world_size
        return sampler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.supervised_tokens += int((inputs["labels"][:, 1:] != -100).sum())
        if not self.chunked_loss:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # accelerate's autocast wraps model.forward only; this path calls the decoder directly.
        with self.accelerator.autocast():
            loss = supervised_ce(model, inputs, num_items_in_batch if self.model_accepts_loss_kwargs else None)
        return (loss, None) if return_outputs else loss

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
        with self.accelerator.autocast():  # distill_step calls the decoder, not model.forward
            out = distill_step(model, self.teacher, inputs, self.settings, self.cache)
        self._kd = [self._kd[0] + float(out["kl"]), self._kd[1] + float(out["ce"]), self._kd[2] + 1]
        return (out["loss"], None) if return_outputs else out["loss"]

    def log(self, logs, *args, **kwargs):
        kl, ce, n = self._kd
        if "loss" in logs and n:
            logs["kd_kl"], logs["kd_ce"] = round(kl / n, 5), round(ce / n, 5)
            self._kd = [0.0, 0.0, 0]
        super().log(logs, *args, **kwargs)


class _FirstStep(TrainerCallback):
    """Records the first optimizer step this process finishes (global step, so it counts on)."""

    def __init__(self):
        self.step: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.step is None:
            self.step = state.global_step


class MetricsCallback(TrainerCallback):
    """Forwards every logged dict to `sink(step, metrics)`: MLflow, a progress bar, a test."""

    def __init__(self, sink: Callable[[int, dict[str, float]], None]):
        self.sink = sink

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.sink(state.global_step, {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})


def training_arguments(cfg: RunConfig, output_dir: Path) -> TrainingArguments:
    """`cfg` with gradient_checkpointing already decided (resolve_gradient_checkpointing) where it was auto."""
    # transformers 5 has no warmup_ratio: warmup_steps takes a float in [0, 1) as a ratio.
    warmup = cfg.warmup_steps if cfg.warmup_steps else cfg.warmup_ratio
    bf16 = cfg.bf16 or bf16_autocast(cfg)
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
        bf16=bf16,  # fp32 weights stay fp32 (load_base): autocast only
        use_cpu=bf16 and not torch.cuda.is_available(),  # else transformers refuses bf16 without a GPU
        fp16=cfg.fp16,
        activation_checkpointing=cfg.gradient_checkpointing is True,  # transformers 5 name for it
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length",  # fewer pad tokens per batch
        disable_tqdm=True,
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


def compute_dtype(cfg: RunConfig) -> torch.dtype:
    if cfg.compute_dtype:
        return getattr(torch, cfg.compute_dtype)
    return torch.bfloat16 if cfg.bf16 else torch.float16 if cfg.fp16 else torch.float32


def load_base(model_path: str, cfg: RunConfig):
    dtype = compute_dtype(cfg)
    if vision.is_vision_language(model_path):  # never quantised: data preparation refuses quantization_bit for it
        return vision.model_class(model_path).from_pretrained(model_path, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
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


def resolve_gradient_checkpointing(cfg: RunConfig, base, train_set) -> tuple[RunConfig, str]:
    """cfg with gradient_checkpointing true or false (auto decided by memory need), and why."""
    lengths = pc.list_value_length(train_set.data.column("input_ids"))
    longest = min(pc.max(lengths).as_py() or 0, cfg.cutoff_len)
    tokens = cfg.per_device_train_batch_size * (-(-longest // 8) * 8)  # the collator pads to a multiple of 8
    half = cfg.bf16 or cfg.fp16 or bf16_autocast(cfg)
    on, why = memory.choose_gradient_checkpointing(cfg.gradient_checkpointing, get_method(cfg).gradient_checkpointing,
                                                   base.config, tokens, 2 if half else 4)
    log.info("gradient checkpointing %s (%s)", "on" if on else "off", why)
    return cfg.model_copy(update={"gradient_checkpointing": on}), f"{'on' if on else 'off'} ({why})"


def compute_label(cfg: RunConfig) -> str:
    """What the matmuls ran in, e.g. `float32 + bf16 autocast` or `nf4 weights, float32 compute`."""
    dtype = str(compute_dtype(cfg)).removeprefix("torch.")
    if cfg.quantization_bit:
        kind = cfg.quantization_type if cfg.quantization_bit == 4 else "int8"
        return f"{kind} weights, {dtype} compute"
    return f"{dtype} + bf16 autocast" if bf16_autocast(cfg) else dtype


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

    teacher = load_teacher(teacher_path, cfg.trust_remote_code)
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
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
    set_seed(cfg.seed)  # adapter init: the same weights in every process and every run
    method = get_method(cfg)
    memory.return_freed_memory()
    memory.reset_peak()
    train_set = load_from_disk(str(Path(data_path) / "train"))
    base = load_base(model_path, cfg)
    footprint_mb = round(base.get_memory_footprint() / 2**20, 1)
    cfg, checkpointing = resolve_gradient_checkpointing(cfg, base, train_set)
    model = method.build(base, cfg)
    init_dir = method.before_train(model, output_dir)
    trainable, total = _parameter_counts(model)
    multimodal = "images" in train_set.column_names
    train_set = train_set.select_columns(["input_ids", "labels"] + (["images"] if multimodal else []))
    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, pad_to_multiple_of=8)
    is_vlm = vision.is_vision_language(model_path)
    processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code) if is_vlm else None
    if multimodal:
        collator = vision.VisionCollator(collator, processor.image_processor)

    args = training_arguments(cfg, output_dir)
    trainer_cls, extra = _SupervisedTokenTrainer, {}
    if cfg.stage == "distill":
        trainer_cls, extra = _DistillTrainer, _distill_kwargs(cfg, teacher_path, data_path, train_set)
        # Rows carry their index so a batch can find its cached teacher outputs.
        train_set = train_set.add_column("row_id", list(range(len(train_set))))
    trainer = trainer_cls(
        model=model, args=args, train_dataset=train_set,
        data_collator=collator,
        callbacks=[*callbacks, first_step := _FirstStep()], **extra,
    )
    checkpoint = last_complete_checkpoint(Path(args.output_dir))
    resumed_from = _loss_before(checkpoint) if checkpoint else None
    first_loss = _first_loss(checkpoint) if checkpoint else None
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - start
    # Under autocast accelerate wrapped model.forward in it; a caller using the model afterwards gets fp32 back.
    trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    history = tuple((h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h)
    if resumed_from:
        _check_resume(resumed_from, history, first_loss, first_step.step)

    adapter_dir = output_dir / "adapter"
    final_loss = history[-1][1] if history else float(result.training_loss)
    out = TrainResult(
        adapter_dir=str(adapter_dir), final_loss=final_loss, steps=trainer.state.global_step,
        train_seconds=round(seconds, 2), supervised_tokens=trainer.supervised_tokens,
        tokens_per_second=round(trainer.supervised_tokens / seconds, 1) if seconds else 0.0,
        trainable_params=trainable, total_params=total,
        resumed_from_step=resumed_from[0] if resumed_from else None, loss_history=history,
        method=method.name, optimizer_used=optimizer_used(cfg, trainer.optimizer),
        trainable_by_part=vision.trainable_by_part(model) if is_vlm else {},
        compute=compute_label(cfg), gradient_checkpointing=checkpointing, footprint_mb=footprint_mb,
        peak_memory_mb=round(memory.peak_mb(), 1),
    )
    if trainer.is_world_process_zero():  # under torchrun, one process writes the results
        method.save(model, adapter_dir, init_dir)
        # A vision-language model ships its processor (tokenizer + image processor) with the adapter.
        (processor or tokenizer).save_pretrained(adapter_dir)
        (output_dir / "train_result.json").write_text(json.dumps(asdict(out), indent=1))
    return out


def remove_checkpoints(output_dir: str | Path) -> bool:
    """Delete a finished run's scratch space (`<output_dir>/checkpoints`: weights plus optimizer
    state per checkpoint); adapter/, merged/ and the reports stay. Call it only once the result is
    safely published: until then the checkpoints are what a retry resumes from."""
    scratch = Path(output_dir) / "checkpoints"
    if not scratch.is_dir():
        return False
    shutil.rmtree(scratch)
    log.info("removed scratch space %s", scratch)
    return True


def last_complete_checkpoint(checkpoints_dir: Path) -> str | None:
    """The newest checkpoint that can be resumed from. A checkpoint cut short by a kill (no or
    unreadable trainer_state.json, no optimizer or scheduler state) is set aside, not resumed:
    Trainer would otherwise load it and fail, or silently start the optimizer afresh."""
    while checkpoints_dir.is_dir() and (last := get_last_checkpoint(str(checkpoints_dir))):
        if _complete(Path(last)):
            return last
        aside = Path(last).with_name(f"incomplete-{Path(last).name}-{time.time_ns()}")
        log.warning("checkpoint %s is incomplete (killed while saving?); set aside as %s", last, aside.name)
        Path(last).rename(aside)
    return None


def _complete(checkpoint: Path) -> bool:
    if not all((checkpoint / f).is_file() for f in CHECKPOINT_FILES):
        return False
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    except (ValueError, KeyError):
        return False
    return True


def _first_loss(checkpoint: str) -> float | None:
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    return losses[0] if losses else None


def _loss_before(checkpoint: str) -> tuple[int, float] | None:
    """(checkpoint step, last loss logged up to it) saved with a checkpoint."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    return state["global_step"], (losses[-1] if losses else math.nan)


class ResumeError(RuntimeError):
    """A resumed run that did not continue where the checkpoint left off."""


def _check_resume(before: tuple[int, float], history: tuple[tuple[int, float], ...],
                  first_loss: float | None = None, first_new_step: int | None = None) -> None:
    """Fail loudly when a resume looks like a restart from scratch.

    `before` is (step, last loss logged) of the checkpoint, `history` the (step, loss) log after
    training (it includes the checkpoint's own entries), `first_loss` the first loss the run ever
    logged, `first_new_step` the first optimizer step this process finished. Three symptoms: the
    step counter did not continue at step + 1, the loss jumped well above the last one, or it gave
    back most of the progress made between the first logged loss and the checkpoint."""
    step, loss = before
    if first_new_step is not None and first_new_step != step + 1:
        raise ResumeError(f"resume from step {step} restarted the step counter: the first step trained "
                          f"after resuming was {first_new_step}, not {step + 1}")
    after = [(s, l) for s, l in history if s > step]
    if not after or math.isnan(loss):
        return
    first = after[0][1]
    if first > loss + RESUME_LOSS_TOLERANCE * max(loss, 1.0):
        raise ResumeError(f"resume from step {step} looks like a restart from scratch: "
                          f"loss {loss:.3f} before, {first:.3f} after")
    if first_loss is not None and not math.isnan(first_loss):
        progress = first_loss - loss
        if progress > 0.1 * max(first_loss, 1.0) and first > first_loss - RESUME_PROGRESS_KEPT * progress:
            raise ResumeError(f"resume from step {step} looks like a restart from scratch: loss {first:.3f} after "
                              f"resuming is back near the untrained {first_loss:.3f} (was {loss:.3f})")
    log.info("resumed at step %d: loss %.3f before, %.3f after", step, loss, first)
