"""One run config: LLaMA-Factory's flat training YAML plus peftflow's own sections.

A LLaMA-Factory `train_lora/*.yaml` loads unchanged (config/load.py reads it). Every cross-field
check (config/checks.py) runs as a validator, so a config from YAML, from deployment JSON, from the
dashboard form or built in Python is checked the same way.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SerializationInfo, WithJsonSchema, field_validator, model_serializer, model_validator

from peftflow.config.checkpoint_keys import CheckpointKeys
from peftflow.config.checks import check_run, refuse_credentials
from peftflow.config.fingerprint import fingerprint_of
from peftflow.config.form import flatten, group, grouped_schema
from peftflow.config.launch_keys import LaunchKeys
from peftflow.config.sections import EvaluationConfig, PromotionConfig, RegistryConfig, Strict, default_registry_name
from peftflow.config.stream_keys import StreamKeys
from peftflow.errors import UserError
from peftflow.methods import METHODS
from peftflow.stages import STAGE_KEYS, STAGES

DEFAULT_MODEL = "builtin:smollm2-135m-instruct"

_REGEX_CHARS = re.compile(r"[\\^$.*+?()\[\]{}|]")


class _RecipeKeys(Strict):
    """The recipe, LoRA and Training groups (the Training group's checkpoint keys: CheckpointKeys)."""

    # Keys stay LLaMA-Factory's flat names (YAML). The JSON (deployment default, dashboard form) is
    # grouped: the recipe, then one object per group of config/form.py GROUPS, in this order; a
    # title's prefix names its group. Both shapes validate to the same config.

    # fmt: off
    # The fields are a table, one or two lines each: the formatter would spread it over 500 lines.
    # the recipe
    model_name_or_path: str = Field(DEFAULT_MODEL, title="Base model",
                                    description="A local dir, a hub id, builtin:NAME (e.g. "
                                                "builtin:smollm2-135m-instruct) or models:/NAME@ALIAS; an adapter "
                                                "(dir or version) starts as its base with it merged.")
    dataset: str = Field("demo_orders", title="Dataset", description="Comma-separated names in dataset_info.json.")
    dataset_dir: str = Field("builtin", title="Dataset folder",
                             description="Folder with dataset_info.json; `builtin` = peftflow's generated data.")
    finetuning_type: Literal[tuple(METHODS)] = Field(  # type: ignore[valid-type] - the names in peftflow.methods
        "lora", title="Method",
        description="LLaMA-Factory's `lora` or `full`, or peftflow's own `prefix`, `prompt`, `ptuning`, `ia3` "
                    "(extensions of LLaMA-Factory's lora | freeze | full).")
    stage: Literal[tuple(STAGES)] = Field(  # type: ignore[valid-type] - the names in peftflow.stages
        "sft", title="Stage", description=" ".join(f"`{s.name}`: {s.description}." for s in STAGES.values()))
    template: str = Field("tokenizer", title="Chat template",
                          description="`tokenizer` (the tokenizer's own) or one of LLaMA-Factory's template names "
                                      "(`qwen3`, `llama3`, `default`, ...); not read by stage pt (plain text).")
    learning_rate: float = Field(2e-4, gt=0.0, title="Learning rate",
                                 description="Peak learning rate of the optimizer.")
    num_train_epochs: float = Field(3.0, gt=0.0, title="Epochs",
                                    description="Passes over the training rows (fractions allowed); Max steps > 0 "
                                                "overrides.")
    max_steps: int = Field(-1, title="Max steps", description="Optimizer steps to train; overrides Epochs when > 0.")
    per_device_train_batch_size: int = Field(8, gt=0, title="Batch size per device",
                                             description="Rows per micro-batch on each training process.")
    gradient_accumulation_steps: int = Field(1, gt=0, title="Gradient accumulation steps",
                                             description="Micro-batches per optimizer step.")
    cutoff_len: int = Field(1024, gt=0, title="Max tokens per row",
                            description="Rows are cut to this many tokens; a row left with no answer token is dropped. "
                                        "Stage pt: the length of each block the texts are cut into.")
    val_size: float = Field(0.1, ge=0.0, title="Held-out rows",
                            description="Rows held out for evaluation: a fraction (< 1) or a number of rows.")
    # LoRA (lora; lora_target also names IA3's targets)
    lora_rank: int = Field(8, gt=0, title="LoRA: rank",
                           description="Rank r of each low-rank update; higher trains more parameters.")
    lora_alpha: int | None = Field(None, gt=0, title="LoRA: alpha",
                                   description="Scale of the update (alpha / rank). Empty: 2 x rank, as LLaMA-Factory.")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, title="LoRA: dropout",
                                description="Dropout on the adapter's input while training.")
    lora_target: str | list[str] = Field(
        "all", title="LoRA: target modules",
        description="`all`, a comma list or list of module names, or a regex string (one with regex "
                    "metacharacters) that peft full-matches against module paths. Also IA3's targets.")
    additional_target: str | list[str] | None = Field(None, title="LoRA: modules trained in full",
                                                      description="Modules trained in full and saved with the adapter "
                                                                  "(modules_to_save).")
    use_dora: bool = Field(False, title="LoRA: DoRA",
                           description="Weight-decomposed LoRA: a learned magnitude per output plus a LoRA direction.")
    use_rslora: bool = Field(False, title="LoRA: rank-stabilised",
                             description="Scale the update by alpha / sqrt(rank) instead of alpha / rank.")
    lora_init: Literal["default", "gaussian", "pissa", "olora"] = Field(
        "default", title="LoRA: init", description="LoRA init; pissa / olora adapters are converted to plain LoRA at "
                                                   "save.")
    pissa_init: bool = Field(False, title="LoRA: PiSSA init",
                             description="LLaMA-Factory's key: the same as LoRA init `pissa`.")
    moe_aux_loss_coef: float | None = Field(
        None, ge=0.0, title="MoE: router loss coefficient",
        description="Mixture-of-experts models (stages sft and pt): add this x the router's load-balancing loss "
                    "to the training loss. Empty or 0: the language-model loss alone.")
    # training details
    lr_scheduler_type: str = Field("cosine", title="Training: LR schedule",
                                   description="transformers scheduler name: cosine, linear, constant, "
                                               "constant_with_warmup, ...")
    lr_scheduler_kwargs: dict[str, float | int | str | bool] = Field(
        default_factory=dict, title="Training: LR schedule arguments",
        description="The schedule's own arguments, as transformers names them: cosine_with_min_lr "
                    "{min_lr: 1.0e-5} or {min_lr_rate: 0.1}, warmup_stable_decay {num_decay_steps: ...}.")
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0, title="Training: warm-up ratio",
                                description="Fraction of the steps over which the learning rate rises from 0.")
    warmup_steps: int = Field(0, ge=0, title="Training: warm-up steps",
                              description="Warm-up in steps; overrides the ratio when > 0.")
    weight_decay: float = Field(0.0, ge=0.0, title="Training: weight decay",
                                description="Decoupled weight decay of the optimizer.")
    max_grad_norm: float = Field(1.0, gt=0.0, title="Training: gradient clipping",
                                 description="Largest gradient norm; larger ones are scaled down.")
    optim: str = Field("adamw_torch", title="Training: optimizer",
                       description="transformers optimizer name: adamw_torch, adamw_8bit, paged_adamw_8bit, sgd, ...")
    seed: int = Field(42, title="Training: seed", description="Random seed: adapter init, data order, held-out split.")
    logging_steps: int = Field(10, gt=0, title="Training: log every N steps",
                               description="Loss lines (run logs, MLflow) every N optimizer steps.")
    save_steps: int = Field(500, gt=0, title="Training: checkpoint every N steps",
                            description="With save_strategy: steps. A retried run resumes from the last "
                                        "checkpoint.")
    save_total_limit: int | None = Field(2, ge=0, title="Training: checkpoints kept",
                                         description="0 or empty: keep all.")
    bf16: bool = Field(False, title="Training: bfloat16 weights", description="Load and train the weights in bfloat16.")
    fp16: bool = Field(False, title="Training: float16 weights",
                       description="Load the weights in float16, with fp16 mixed precision.")
    bf16_autocast: bool | None = Field(
        None, title="Training: bfloat16 autocast",
        description="Run the matmuls in bfloat16 under torch.autocast; what trains, the optimizer state and the loss "
                    "stay float32, and a frozen base is held in bfloat16. "
                    "Empty: on where bf16 matmuls are fast (a CUDA GPU with bf16, a CPU with AMX or AVX512-BF16) and "
                    "neither bf16 nor fp16 nor quantization_bit is set; else off.")
    # One choice of three in the form; a union with a const renders as "is a const and cannot be changed".
    gradient_checkpointing: Annotated[bool | Literal["auto"], WithJsonSchema({"enum": ["auto", True, False]})] = Field(
        "auto", title="Training: gradient checkpointing",
        description="Recompute activations in the backward pass instead of keeping them. auto: on when the longest "
                    "batch's activations would take over half the memory free after loading the model; the run "
                    "records what it chose.")
    storage: str | None = Field(None, title="Training: run store",
                                description="fsspec URL (e.g. s3://bucket/peftflow) for checkpoints and step outputs, "
                                            "so a run "
                                            "resumes and is reused on another machine. Empty: PEFTFLOW_STORAGE, else "
                                            "local disk only.")
    output_dir: str | None = Field(None, title="Training: output folder",
                                   description="Where checkpoints and the adapter go. Empty: "
                                               "PEFTFLOW_HOME/runs/REGISTRY_NAME.")
    # fmt: on


class _SharedKeys(StreamKeys, CheckpointKeys, _RecipeKeys):
    """The keys every stage reads, up to the Vision-language group (RunConfig declares the rest)."""

    # fmt: off
    # data details
    max_samples: int | None = Field(None, gt=0, title="Data: max rows per dataset",
                                    description="Read at most this many valid rows of each dataset. Empty: all.")
    train_dataset: str | None = Field(
        None, title="Data: LLaMA-Factory v1 dataset",
        description="LLaMA-Factory v1's data: a dataset YAML (`name: {path, source, converter, size}`) or a "
                    "local data file or folder; replaces Dataset / Dataset folder.")
    train_on_prompt: bool = Field(False, title="Data: train on prompts",
                                  description="Also learn the prompt tokens, not only the answers.")
    mask_history: bool = Field(False, title="Data: last answer only",
                               description="Multi-turn rows: learn only the last answer.")
    enable_thinking: bool = Field(True, title="Data: learn thinking",
                                  description="Reasoning templates: learn thinking blocks (an answer without one gets "
                                              "an "
                                              "empty one to learn); false removes them and puts an empty one in the "
                                              "prompt, as LLaMA-Factory.")
    preserve_thinking: bool = Field(False, title="Data: keep earlier thinking",
                                    description="Reasoning templates with mask_history: keep the thinking of earlier "
                                                "answers.")
    tool_format: Literal["default", "qwen", "qwen3_5", "llama3", "mistral", "glm4"] | None = Field(
        None, title="Data: tool-call format", description="Tool-calling text format (LLaMA-Factory's names). Empty: "
                                                          "the template's.")
    default_system: str | None = Field(None, title="Data: system prompt",
                                       description="Replaces the template's default system prompt.")
    on_invalid_rows: Literal["error", "drop"] = Field("error", title="Data: invalid rows",
                                                      description="Stop on invalid rows, or drop them and log which.")
    mix_strategy: Literal["concat", "interleave_under", "interleave_over", "interleave_once"] = Field(
        "concat", title="Data: mixing",
        description="How several datasets combine (LLaMA-Factory's meanings, datasets' interleave_datasets): one "
                    "after another; or rows drawn from each at random (interleave_probs, seeded) until the first "
                    "runs out (under), until every one has run out, reusing rows (over), or every row once (once).")
    interleave_probs: list[float] | None = Field(
        None, title="Data: mixing probabilities",
        description="Interleaving: each dataset's chance per drawn row, in `dataset` order, summing to 1 "
                    "(a comma list). Empty: equal.")
    packing: bool | None = Field(None, title="Data: packing",
                                 description="Pack whole training rows into sequences of up to cutoff_len tokens; "
                                             "packed rows attend to each other (prefer neat packing). Empty: stage pt "
                                             "only (its texts are cut into blocks).")
    neat_packing: bool = Field(False, title="Data: neat packing",
                               description="Packing without cross-attention: each packed row attends only to itself. "
                                           "Stage sft only.")
    # peftflow's own sections
    registry: RegistryConfig = Field(default_factory=RegistryConfig, title="Registry",
                                     description="Where the fine-tune is published (MLflow model registry).")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig, title="Evaluation",
                                         description="Held-out evaluation of base, fine-tune and champion.")
    promotion: PromotionConfig = Field(default_factory=PromotionConfig, title="Promotion",
                                       description="The gate that moves the `champion` alias.")
    merge: bool | None = Field(None, title="Merge: ship a merged model",
                               description="Empty: merge when the method can, else publish the adapter with its base.")
    merge_tolerance: float = Field(1e-3, gt=0.0, title="Merge: tolerance",
                                   description="Largest allowed |logit| difference, merged vs adapter.")
    quantized_merge_tolerance: float | None = Field(
        None, gt=0.0, title="Merge: tolerance vs the k-bit model",
        description="With quantization_bit: largest allowed |logit| difference, merged (fp32) vs the k-bit model as "
                    "trained, i.e. the base's quantisation error. Empty: reported, not enforced.")
    # prompt family (prefix, prompt, ptuning)
    num_virtual_tokens: int = Field(16, gt=0, title="Prompt methods: virtual tokens",
                                    description="prefix / prompt / ptuning: number of virtual tokens learned.")
    prefix_projection: bool = Field(False, title="Prompt methods: prefix projection",
                                    description="Prefix tuning: reparameterise the prefix through an MLP.")
    prompt_tuning_init: Literal["random", "text"] = Field(
        "random", title="Prompt methods: prompt init",
        description="Prompt and prefix tuning: random, or from the init text (its embeddings; for prefix, its keys and "
                    "values).")
    prompt_tuning_init_text: str | None = Field(None, title="Prompt methods: init text",
                                                description="Prompt / prefix init text (prompt init: text).")
    encoder_reparameterization_type: Literal["MLP", "LSTM"] = Field("MLP", title="Prompt methods: P-tuning encoder",
                                                                    description="P-tuning prompt encoder.")
    encoder_hidden_size: int | None = Field(None, gt=0, title="Prompt methods: encoder width",
                                            description="Prefix / P-tuning encoder width. Empty: the model's hidden "
                                                        "size.")
    # quantised base (QLoRA)
    quantization_bit: Literal[4, 8] | None = Field(None, title="Quantization: bits",
                                                   description="Load the base in 4 or 8 bits (bitsandbytes, QLoRA). "
                                                               "Empty: not quantised.")
    quantization_method: Annotated[Literal["bnb"], WithJsonSchema({"enum": ["bnb"], "type": "string"})] = Field(
        "bnb", title="Quantization: library", description="bitsandbytes (`bnb`), the only one so far.")
    quantization_type: Literal["nf4", "fp4"] = Field("nf4", title="Quantization: 4-bit type",
                                                     description="4-bit data type: nf4 or fp4.")
    double_quantization: bool = Field(True, title="Quantization: double",
                                      description="4-bit: also quantise the quantisation constants.")
    compute_dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, title="Quantization: compute dtype",
        description="Dtype of the loaded weights (4-bit: of the compute). Empty: bfloat16 with bf16, float16 with "
                    "fp16, else float32.")
    # vision-language models (LLaVA-style); ignored for text-only models
    freeze_vision_tower: bool = Field(
        True, title="Vision-language: freeze vision tower",
        description="Keep the image encoder frozen; false also puts LoRA adapters into it.")
    train_projector: bool = Field(
        True, title="Vision-language: train projector",
        description="Train the multimodal projector in full (saved as peft modules_to_save).")
    freeze_multi_modal_projector: bool | None = Field(
        None, title="Vision-language: freeze projector", description="LLaMA-Factory's key: the opposite of train "
                                                                     "projector.")
    # fmt: on

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

    @field_validator("interleave_probs", mode="before")
    @classmethod
    def _split_probs(cls, v: Any) -> Any:
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v

    @field_validator("storage")
    @classmethod
    def _storage_url(cls, v: str | None) -> str | None:
        from peftflow.store import check_url

        try:
            return check_url(v.strip()) if v and v.strip() else None
        except UserError as e:
            raise ValueError(str(e).removeprefix("storage: ")) from None

    @field_validator("save_total_limit", mode="before")
    @classmethod
    def _zero_keeps_all(cls, v: Any) -> Any:
        return None if v == 0 else v  # the form's JSON writes None as 0 (form.NONE_AS)


# Pydantic takes the first base's fields last: the shared keys, then the stages' keys
# (peftflow/stages/<name>/keys.py, in STAGES order), then LaunchKeys, so the fields (a flat dump,
# which of several errors is reported) keep the form's order of groups (GROUPS).
class RunConfig(LaunchKeys, *reversed(STAGE_KEYS), _SharedKeys):
    """Everything that varies between runs. Field names follow LLaMA-Factory where it has one."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_credentials_and_ungroup(cls, raw: Any) -> Any:
        refuse_credentials(raw)
        return flatten(raw)

    @model_serializer(mode="wrap")
    def _grouped_json(self, handler: Any, info: SerializationInfo) -> dict[str, Any]:
        data = handler(self)
        if not info.mode_is_json() or (info.context or {}).get("flat"):
            return data
        return group(data, _defaults())

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = super().__get_pydantic_json_schema__(core_schema, handler)
        grouped_schema(handler.resolve_ref_schema(schema), handler.resolve_ref_schema)
        return schema

    @model_validator(mode="after")
    def _cross_checks(self) -> "RunConfig":
        check_run(self)
        if self.registry.name is None:  # filled once, so a copy with other data keeps its registered model
            self.registry.name = default_registry_name(self)
        return self

    @property
    def should_merge(self) -> bool:
        """Ship a merged checkpoint (True) or the adapter with its base (False)."""
        return self.merge if self.merge is not None else METHODS[self.finetuning_type].mergeable

    @property
    def trains_projector(self) -> bool:
        """Vision-language models: train_projector, or LLaMA-Factory's freeze_multi_modal_projector when set."""
        if self.freeze_multi_modal_projector is not None:
            return not self.freeze_multi_modal_projector
        return self.train_projector

    @property
    def needs_bitsandbytes(self) -> bool:
        """A k-bit base or a bitsandbytes optimizer (8-bit, paged): the only runs that import it."""
        return bool(self.quantization_bit) or "8bit" in self.optim or self.optim.startswith("paged_")

    @property
    def dataset_names(self) -> list[str]:
        return [n.strip() for n in self.dataset.split(",") if n.strip()]

    @property
    def effective_lora_alpha(self) -> int:
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_rank

    def guard_config(self) -> RunConfig:
        """The same run reading the guard set, prepared whole: every row scored, none held out or dropped
        silently. A stage of pairs or feedback reads it as conversations, as SFT does (the loss on what SFT learned)."""
        reads_rows = STAGES[self.stage].row_kind in ("conversations", "text")
        return self.model_copy(
            update={
                "stage": self.stage if reads_rows else "sft",
                "dataset": self.promotion.guard_dataset,
                "train_dataset": None,
                "val_size": 0.0,
                "max_samples": self.promotion.guard_max_samples,
                "packing": None,  # every guard row is scored on its own
                "neat_packing": False,
                "streaming": False,
            }
        )

    def fingerprint(self) -> str:
        """Hash of the fields that change a result, for caching and for 'did anything change' checks;
        a field added since the rule was set counts once given (config/fingerprint.py)."""
        return fingerprint_of(self)

    def resolved_output_dir(self) -> Path:
        from peftflow.paths import peftflow_home

        return Path(self.output_dir) if self.output_dir else peftflow_home() / "runs" / self.registry.name


def _defaults() -> dict[str, Any]:
    """Each key's default (a section's dotted): the grouped JSON leaves out what equals it."""
    out = {k: f.get_default(call_default_factory=True) for k, f in RunConfig.model_fields.items()}
    for name in ("registry", "evaluation", "promotion"):
        section = RunConfig.model_fields[name].annotation
        out |= {f"{name}.{k}": f.get_default(call_default_factory=True) for k, f in section.model_fields.items()}
    return out


def demo_config() -> RunConfig:
    """What `peftflow run` does with no config: a short LoRA run on the built-in order-extraction
    task (configs/demo.yaml holds the same values). About 3 minutes of training on 2 CPU cores."""
    return RunConfig(
        registry=RegistryConfig(name="peftflow-demo"),
        max_steps=40,
        learning_rate=1e-3,
        logging_steps=5,
        save_steps=20,
        val_size=32,
        evaluation=EvaluationConfig(metric="json_fields", max_samples=32, max_new_tokens=48),
    )
