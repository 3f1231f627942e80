"""One run config: LLaMA-Factory's flat training YAML plus peftflow's own sections.

A LLaMA-Factory `train_lora/*.yaml` loads unchanged. Keys LLaMA-Factory knows but peftflow
does not use yet are collected into one warning line; any other unknown key is an error that
names the key and the nearest valid one.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from peftflow.errors import UserError
from peftflow.methods.traits import TRAITS, names_with

DEFAULT_MODEL = "builtin:smollm2-135m-instruct"

# LLaMA-Factory / HF keys that are valid in a training YAML but change nothing in peftflow yet.
# They are reported in one warning line, never silently dropped.
ACCEPTED_UNUSED_KEYS = frozenset({
    "do_train", "do_eval", "do_predict", "preprocessing_num_workers", "overwrite_cache",
    "overwrite_output_dir", "plot_loss", "ddp_timeout", "flash_attn", "dataloader_num_workers",
    "per_device_eval_batch_size", "eval_strategy", "eval_steps", "save_strategy",
    "save_only_model", "resume_from_checkpoint", "include_num_input_tokens_seen",
    "deepspeed", "enable_liger_kernel", "use_unsloth", "shift_attn", "rope_scaling",
    "disable_gradient_checkpointing", "upcast_layernorm", "packing", "neat_packing",
    "tokenized_path", "streaming", "buffer_size", "mix_strategy", "interleave_probs",
    "image_max_pixels", "video_max_pixels", "export_dir", "export_size", "export_device",
    "export_legacy_format", "infer_backend", "max_new_tokens", "run_name", "hub_model_id",
    "push_to_hub", "logging_dir", "log_level", "report_to",
})


_REGEX_CHARS = re.compile(r"[\\^$.*+?()\[\]{}|]")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RegistryConfig(_Strict):
    """Where the fine-tune is published (MLflow model registry)."""

    name: str = Field("peftflow-demo", description="Registered model name in MLflow.")
    experiment: str = Field("peftflow", description="MLflow experiment that holds the runs.")
    gguf_outtype: Literal["f32", "f16", "bf16", "q8_0"] | None = Field(
        None, description="Also attach the merged model as one GGUF file (`model.gguf`, llama.cpp's converter, this "
                          "outtype) to the registered version. Needs peftflow[gguf]. Merged versions only.")
    vllm_ready: bool = Field(
        False, description="An adapter version must be one vLLM serves: LoRA without modules_to_save (no "
                           "additional_target), safetensors, tokenizer with chat template; else the run is refused.")


class PromotionConfig(_Strict):
    """The gate that moves the `champion` alias."""

    metric: Literal["score", "loss", "perplexity"] = Field(
        "score", description="Compared metric: `score` (generation metric, higher wins), `loss` or `perplexity` (lower wins).")
    min_improvement: float = Field(0.0, description="How much the challenger must beat the champion (or base) by.")
    auto_promote: bool = Field(True, description="Move `champion` when the gate passes.")
    bootstrap_samples: int = Field(
        0, ge=0, description="Paired bootstrap resamples over per-example scores (metric `score` only); "
                             "> 0: promote only when the lower confidence bound of the gain clears min_improvement. 0: off.")
    confidence: float = Field(0.95, gt=0.0, lt=1.0, description="Confidence level of the bootstrap interval.")
    require_approval: bool = Field(
        False, description="When the gate passes, pause the flow run for a person to approve or reject in the Prefect UI.")
    approval_timeout_s: int = Field(24 * 3600, gt=0, description="How long a paused run waits for approval; then it is not promoted.")
    harness_metric: str | None = Field(
        None, description="Gate on an lm-eval score instead of `metric`: `TASK/METRIC` of a task in "
                          "evaluation.harness_tasks (higher wins), e.g. `peftflow_heldout/peftflow_score`.")
    guard_dataset: str | None = Field(
        None, description="Dataset name(s) in `dataset_dir` kept apart as a general-ability guard set: the fine-tune's "
                          "loss on it may not rise above the incumbent's (champion, else base) by more than guard_tolerance.")
    guard_tolerance: float = Field(0.05, description="Largest allowed rise in guard-set loss (nats per token).")
    guard_max_samples: int = Field(64, gt=0, description="Guard rows scored.")


class EvaluationConfig(_Strict):
    """Held-out evaluation of base, fine-tune and champion."""

    metric: Literal["exact_match", "token_f1", "json_fields", "answer_accuracy"] = Field(
        "token_f1", description="Generation metric per example; the demo task uses json_fields, the image task answer_accuracy.")
    max_samples: int = Field(64, gt=0, description="Held-out examples scored by generation.")
    max_new_tokens: int = Field(64, gt=0, description="Generation budget per example.")
    batch_size: int = Field(16, gt=0, description="Examples per generation / loss batch.")
    harness_tasks: list[str] = Field(
        default_factory=list, description="lm-evaluation-harness tasks run on base, fine-tune and champion (HF backend; "
                                          "needs peftflow[harness]). `peftflow_heldout`: the held-out split above, "
                                          "written by peftflow as an lm-eval task (same rows, prompts and metric).")
    harness_include: str | None = Field(None, description="Directory of local lm-eval task YAMLs (offline, built-in tasks "
                                                          "cannot download their data).")


class RunConfig(_Strict):
    """Everything that varies between runs. Field names follow LLaMA-Factory where it has one."""

    # model
    model_name_or_path: str = Field(DEFAULT_MODEL, description="Local dir, hub id, or builtin:NAME.")
    template: str = Field("default", description="Chat template: `default` uses the tokenizer's own.")
    trust_remote_code: bool = Field(False, description="Run Python code shipped with the model or tokenizer. Off unless set.")
    allow_pickle_weights: bool = Field(False, description="Accept a base model with only pickle (.bin/.pt) weights; they are loaded with torch's weights_only loader. peftflow itself writes safetensors only.")
    # method
    stage: Literal["sft", "distill"] = Field(
        "sft", description="`sft`: supervised fine-tuning. `distill`: the student (model_name_or_path, or the "
                           "teacher pruned to student_layers) learns the teacher's output distribution.")
    finetuning_type: Literal["lora", "full", "prefix", "prompt", "ptuning", "ia3"] = Field(
        "lora", description="LLaMA-Factory's `lora` or `full`, or peftflow's own `prefix`, `prompt`, `ptuning`, `ia3` "
                            "(extensions of LLaMA-Factory's lora | freeze | full).")
    lora_rank: int = Field(8, gt=0)
    lora_alpha: int | None = Field(None, gt=0, description="Defaults to 2 x lora_rank, as LLaMA-Factory.")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    lora_target: str | list[str] = Field(
        "all", description="`all`, a comma list or list of module names, or a regex string (one with regex "
                           "metacharacters) that peft full-matches against module paths. Also IA3's targets.")
    additional_target: str | list[str] | None = Field(None, description="Modules trained in full and saved (modules_to_save).")
    # vision-language models (LLaVA-style); ignored for text-only models
    freeze_vision_tower: bool = Field(
        True, description="Vision-language models: keep the image encoder frozen; false also puts LoRA adapters into it.")
    train_projector: bool = Field(
        True, description="Vision-language models: train the multimodal projector in full (saved as peft modules_to_save).")
    freeze_multi_modal_projector: bool | None = Field(
        None, description="LLaMA-Factory's key: the opposite of train_projector.")
    use_dora: bool = False
    use_rslora: bool = False
    lora_init: Literal["default", "gaussian", "pissa", "olora"] = Field(
        "default", description="LoRA init; pissa / olora adapters are converted to plain LoRA at save.")
    pissa_init: bool = Field(False, description="LLaMA-Factory's key: same as lora_init: pissa.")
    # prompt family (prefix, prompt, ptuning)
    num_virtual_tokens: int = Field(16, gt=0)
    prefix_projection: bool = Field(False, description="Prefix tuning: reparameterise the prefix through an MLP.")
    prompt_tuning_init: Literal["random", "text"] = "random"
    prompt_tuning_init_text: str | None = Field(None, description="Prompt tuning init text (prompt_tuning_init: text).")
    encoder_reparameterization_type: Literal["MLP", "LSTM"] = Field("MLP", description="P-tuning prompt encoder.")
    encoder_hidden_size: int | None = Field(None, gt=0, description="Prefix / P-tuning encoder width; default hidden size.")
    # quantised base (QLoRA)
    quantization_bit: Literal[4, 8] | None = Field(None, description="Load the base in 4 or 8 bits (bitsandbytes).")
    quantization_method: Literal["bnb"] = "bnb"
    quantization_type: Literal["nf4", "fp4"] = "nf4"
    double_quantization: bool = True
    compute_dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="4-bit compute dtype; default bfloat16 with bf16: true, else float32.")
    # data
    dataset: str = Field("demo_orders", description="Comma-separated names in dataset_info.json.")
    dataset_dir: str = Field("builtin", description="Folder with dataset_info.json; `builtin` = peftflow's generated data.")
    cutoff_len: int = Field(1024, gt=0)
    max_samples: int | None = Field(None, gt=0)
    val_size: float = Field(0.1, ge=0.0, description="Fraction (<1) or number of rows held out.")
    train_on_prompt: bool = False
    mask_history: bool = False
    on_invalid_rows: Literal["error", "drop"] = Field("error", description="Stop on invalid rows, or drop and log them.")
    # training
    output_dir: str | None = Field(None, description="Defaults to <PEFTFLOW_HOME>/runs/<registry name>.")
    per_device_train_batch_size: int = Field(8, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    learning_rate: float = Field(2e-4, gt=0.0)
    num_train_epochs: float = Field(3.0, gt=0.0)
    max_steps: int = Field(-1, description="Overrides num_train_epochs when > 0.")
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    optim: str = "adamw_torch"
    logging_steps: int = Field(10, gt=0)
    save_steps: int = Field(500, gt=0)
    save_total_limit: int | None = Field(2, gt=0)
    seed: int = 42
    bf16: bool = False
    fp16: bool = False
    bf16_autocast: bool | None = Field(
        None, description="Keep float32 weights, optimizer and loss, and run the matmuls in bfloat16 under "
                          "torch.autocast. null: on where bf16 matmuls are fast (a CUDA GPU with bf16, a CPU with "
                          "AMX or AVX512-BF16) and neither bf16 nor fp16 nor quantization_bit is set; else off.")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto", description="Recompute activations in the backward pass instead of keeping them. auto: on when "
                            "the longest batch's activations would take over half the memory free after loading "
                            "the model (peftflow.memory); the run records what it chose.")
    # distributed training (the train stage runs through torchrun when either is > 1)
    num_processes: int = Field(1, ge=1, description="Training processes per node (one per GPU); > 1 runs the train stage with torchrun. Global batch = per_device_train_batch_size x gradient_accumulation_steps x num_processes x nnodes.")
    nnodes: int = Field(1, ge=1, description="Nodes; > 1 also needs MASTER_ADDR, MASTER_PORT and PEFTFLOW_NODE_RANK on every node.")
    # peftflow's own sections
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    merge: bool | None = Field(None, description="Ship a merged model. Default (null): merge when the method "
                                                "can, else publish the adapter with its base.")
    merge_tolerance: float = Field(1e-3, gt=0.0, description="Largest allowed |logit| difference, merged vs adapter.")
    quantized_merge_tolerance: float | None = Field(
        None, gt=0.0, description="With quantization_bit: largest allowed |logit| difference, merged (fp32) vs the "
                                  "k-bit model as trained, i.e. the base's quantisation error. null: reported, not enforced.")
    # distillation (stage: distill)
    teacher: str | None = Field(None, description="Teacher model: builtin:, a local dir, a hub id, models:/NAME@ALIAS or models:/NAME/VERSION.")
    teacher_adapter: str | None = Field(None, description="A PEFT adapter dir applied to the teacher.")
    student_layers: int | None = Field(None, gt=0, description="Student = the teacher pruned to N evenly spaced layers.")
    kd_temperature: float = Field(2.0, gt=0.0)
    kd_ratio: float = Field(0.5, ge=0.0, le=1.0, description="Weight of the KL term; 1 - kd_ratio weighs cross-entropy.")
    kd_direction: Literal["forward", "reverse"] = Field("forward", description="forward: KL(teacher||student).")
    kd_chunk_size: int = Field(256, gt=0, description="Supervised positions per logits chunk.")
    teacher_topk: int = Field(0, ge=-1, description="0: live teacher. k > 0: cache the teacher's top-k logits "
                                                  "per position (approximate). -1: cache all (exact).")

    @field_validator("lora_target", "additional_target", mode="before")
    @classmethod
    def _split_commas(cls, v: Any) -> Any:
        # LLaMA-Factory's comma strings are lists; a string with regex metacharacters is a regex
        # (peft full-matches a str target against each module path).
        if isinstance(v, str) and v != "all":
            if _REGEX_CHARS.search(v):
                try:
                    re.compile(v)
                except re.error as e:
                    raise ValueError(f"invalid regex: {e}") from None
                return v
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> "RunConfig":
        if self.bf16 and self.fp16:
            raise ValueError("bf16 and fp16 are both true; choose one")
        if self.bf16_autocast and self.fp16:
            raise ValueError("bf16_autocast and fp16 are both true; choose one")
        if self.val_size >= 1 and self.val_size != int(self.val_size):
            raise ValueError("val_size must be a fraction below 1 or a whole number of rows")
        if not [n for n in self.dataset.split(",") if n.strip()]:
            raise ValueError("dataset names no dataset")
        self._method_checks()
        self._distill_checks()
        self._serving_checks()
        return self

    def _serving_checks(self) -> None:
        harness_metric = self.promotion.harness_metric
        if harness_metric and harness_metric.partition("/")[0] not in self.evaluation.harness_tasks:
            raise ValueError(f"promotion.harness_metric {harness_metric}: its task is not in evaluation.harness_tasks "
                             f"({', '.join(self.evaluation.harness_tasks) or 'none'})")
        if self.registry.gguf_outtype and not self.should_merge:
            raise ValueError("registry.gguf_outtype: GGUF export needs a merged model; this run publishes an adapter")
        if not self.registry.vllm_ready or self.should_merge:
            return
        if self.finetuning_type != "lora" or self.use_dora:
            what = "use_dora" if self.finetuning_type == "lora" else f"finetuning_type '{self.finetuning_type}'"
            raise ValueError(f"registry.vllm_ready: vLLM serves plain LoRA adapters only, not {what}")
        if self.additional_target:
            raise ValueError("registry.vllm_ready: additional_target is saved as modules_to_save, which vLLM refuses; drop it")

    def _distill_checks(self) -> None:
        distill_keys = [k for k in ("teacher", "teacher_adapter", "student_layers") if getattr(self, k) is not None]
        if self.stage != "distill":
            if distill_keys:
                raise ValueError(f"{', '.join(distill_keys)} only apply to stage: distill")
            return
        if not self.teacher:
            raise ValueError("stage: distill needs a teacher (a model reference)")
        if self.student_layers and "model_name_or_path" in self.model_fields_set:
            raise ValueError("student_layers and model_name_or_path both name the student; keep one")
        if not TRAITS[self.finetuning_type].distill_student:
            raise ValueError(f"finetuning_type '{self.finetuning_type}' cannot be a distillation student "
                             f"(students: {', '.join(names_with('distill_student'))})")
        if self.kd_direction == "reverse" and self.teacher_topk > 0:
            raise ValueError("kd_direction: reverse needs the whole teacher distribution; set teacher_topk to 0 or -1")

    def _method_checks(self) -> None:
        """Method x option checks, driven by the capability table in methods/traits.py."""
        name = self.finetuning_type
        traits = TRAITS[name]
        method = f"finetuning_type '{name}'"
        if self.gradient_checkpointing is True and not traits.gradient_checkpointing:
            raise ValueError(f"gradient_checkpointing: true does not work with {method}; set it to false")
        if self.merge is False and name == "full":
            raise ValueError("merge: false with finetuning_type 'full': a full fine-tune ships as trained; drop merge")
        if self.merge and not traits.mergeable:
            raise ValueError(f"merge: true but {method} cannot be merged into the base; drop merge "
                             f"(the adapter is published with its base)")
        if self.quantization_bit and not traits.supports_kbit:
            raise ValueError(f"quantization_bit: {self.quantization_bit} needs a method that trains on a k-bit "
                             f"base; {method} does not (k-bit methods: {', '.join(names_with('supports_kbit'))})")
        if traits.family != "lora":
            lora_only = [k for k in ("use_dora", "use_rslora", "pissa_init") if getattr(self, k)]
            lora_only += ["lora_init"] if self.lora_init != "default" else []
            if lora_only:
                raise ValueError(f"{', '.join(lora_only)} only apply to finetuning_type 'lora', not {method}")
        if ("train_projector" in self.model_fields_set and self.freeze_multi_modal_projector is not None
                and self.train_projector == self.freeze_multi_modal_projector):
            raise ValueError("train_projector and freeze_multi_modal_projector disagree; keep one")
        if self.pissa_init and self.lora_init not in ("default", "pissa"):
            raise ValueError(f"pissa_init: true and lora_init: {self.lora_init} disagree; keep one")
        if self.prompt_tuning_init == "text":
            if name != "prompt":
                raise ValueError(f"prompt_tuning_init: text only applies to finetuning_type 'prompt', not {method}")
            if not self.prompt_tuning_init_text:
                raise ValueError("prompt_tuning_init: text needs prompt_tuning_init_text")

    # derived values
    @property
    def should_merge(self) -> bool:
        """Ship a merged checkpoint (True) or the adapter with its base (False)."""
        return self.merge if self.merge is not None else TRAITS[self.finetuning_type].mergeable

    @property
    def trains_projector(self) -> bool:
        """Vision-language models: train_projector, or LLaMA-Factory's freeze_multi_modal_projector when set."""
        if self.freeze_multi_modal_projector is not None:
            return not self.freeze_multi_modal_projector
        return self.train_projector

    @property
    def dataset_names(self) -> list[str]:
        return [n.strip() for n in self.dataset.split(",") if n.strip()]

    @property
    def effective_lora_alpha(self) -> int:
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_rank

    def guard_config(self) -> RunConfig:
        """The same run reading the guard set: every row scored, none held out, none dropped silently."""
        return self.model_copy(update={"dataset": self.promotion.guard_dataset, "val_size": 0.0,
                                       "max_samples": self.promotion.guard_max_samples})

    def fingerprint(self) -> str:
        """Hash of every field, for caching and for 'did anything change' checks."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def resolved_output_dir(self) -> Path:
        from peftflow.paths import peftflow_home

        return Path(self.output_dir) if self.output_dir else peftflow_home() / "runs" / self.registry.name


def _nearest(key: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _valid_keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def parse_config(raw: dict[str, Any], source: str = "config") -> tuple[RunConfig, list[str]]:
    """Validate a raw mapping. Returns the config and the keys accepted but unused."""
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping of keys to values, got {type(raw).__name__}")
    raw = dict(raw)
    secret = _secret_key(raw)
    if secret:
        # The value is never echoed: it would land in logs, Prefect parameters and MLflow params.
        raise UserError(f"{source}: key '{secret}' looks like a credential; the run config is shown in the Prefect UI and "
                        "logged to MLflow, so credentials come from environment variables (HF_TOKEN, AWS_*, "
                        "MLFLOW_TRACKING_*) or Prefect Secret blocks, never from the config")
    if "warmup_ratio" in raw and raw.get("warmup_steps"):
        raise UserError(f"{source}: warmup_ratio and warmup_steps are both set; keep one")
    unused = sorted(k for k in raw if k in ACCEPTED_UNUSED_KEYS)
    for k in unused:
        raw.pop(k)
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        raise UserError(_describe(e, source)) from None
    return cfg, unused


def _secret_key(raw: dict[str, Any], prefix: str = "") -> str | None:
    from peftflow.redact import is_secret_key

    for k, v in raw.items():
        key = f"{prefix}{k}"
        if is_secret_key(str(k)):
            return key
        if isinstance(v, dict) and (found := _secret_key(v, key + ".")):
            return found
    return None


def _describe(e: ValidationError, source: str) -> str:
    err = e.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc) or "(config)"
    if err["type"] == "extra_forbidden":
        section = RunConfig
        for part in loc[:-1]:
            section = section.model_fields[part].annotation  # nested section model
        return f"{source}: unknown key '{key}'{_nearest(loc[-1], _valid_keys(section))}"
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:
        return f"{source}: {msg}"
    return f"{source}: key '{key}': {msg} (got {err.get('input')!r})"


def demo_config() -> RunConfig:
    """What `peftflow run` does with no config: a short LoRA run on the built-in order-extraction
    task (configs/demo.yaml holds the same values). About 3 minutes of training on 2 CPU cores."""
    return RunConfig(
        max_steps=40, learning_rate=1e-3, logging_steps=5, save_steps=20, val_size=32,
        evaluation=EvaluationConfig(metric="json_fields", max_samples=32, max_new_tokens=48),
    )


def load_config(path: str | os.PathLike | None) -> tuple[RunConfig, list[str]]:
    """Read a YAML run config. `None` gives the built-in demo."""
    if path is None:
        return demo_config(), []
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: config file not found")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{p}:{where} invalid YAML: {getattr(e, 'problem', e)}") from None
    except UnicodeDecodeError:
        raise UserError(f"{p}: not UTF-8 text") from None
    return parse_config(raw, source=str(p))
