"""What peftflow does with each LLaMA-Factory key it does not hold under its own name: a key is
honoured (a RunConfig field, or moved to one by config/load.py), refused with its reason, or
accepted with a warning that says why it cannot change the result (speed only, or no effect here).
No key that changes the trained weights, the evaluation or the kept files is accepted unheard.
docs/configuration.md's key table is written from these tables (scripts/key_table.py)."""

from __future__ import annotations

from typing import Any

from peftflow.config.v1 import NO_EFFECT as V1_NO_EFFECT
from peftflow.config.v1 import SPEED_ONLY as V1_SPEED_ONLY
from peftflow.redact import is_secret_key

# Keys that change how fast a run goes (or how much memory it takes), never the weights it trains.
SPEED_ONLY: dict[str, str] = {
    "dataloader_num_workers": "batches are built in the training process",
    "dataloader_pin_memory": "batches are built in the training process",
    "use_unsloth": "peftflow loads models through transformers, not Unsloth",
    "use_unsloth_gc": "peftflow loads models through transformers, not Unsloth",
    "deepspeed": "ZeRO shards memory and trains the same weights; peftflow runs DDP (torchrun), so a model "
    "that only fits sharded runs out of memory instead",
    "torch_compile": "peftflow trains eagerly",
    "use_v1_kernels": "peftflow loads models through transformers' own kernels",
    "use_reentrant_gc": "activation checkpointing recomputes the same values either way",
    "quantization_device_map": "a k-bit base loads where the run trains",
    "device_map": "the base loads where the run trains",
    "offload_folder": "the base loads where the run trains",
}

# Keys that change nothing in a peftflow run: peftflow does it anyway, or does it elsewhere.
NO_EFFECT: dict[str, str] = {
    "do_train": "peftflow always trains",
    "do_eval": "the held-out rows are always scored after training (eval_strategy: during it too)",
    "do_predict": "the held-out rows are always scored with generation (evaluation.max_samples)",
    "overwrite_cache": "prepared data is cached by the fingerprint of what made it, so it is never stale",
    "overwrite_output_dir": "a run dir is keyed by what it trains: a finished step is reused, a killed one resumed",
    "plot_loss": "the loss curves are in MLflow and the run's Prefect artifact",
    "include_num_input_tokens_seen": "supervised tokens and tokens/s are logged at every logging step",
    "run_name": "the MLflow run is named by the registered model",
    "logging_dir": "logs go to MLflow and the Prefect run",
    "log_level": "`--verbose` shows library logs",
    "report_to": "metrics go to MLflow",
    "hub_model_id": "peftflow publishes to the MLflow registry (push_to_hub is refused)",
    "model_max_length": "LLaMA-Factory sets it from cutoff_len, and so does peftflow",
    "print_param_status": "trainable parameter counts are logged with every run",
    "export_dir": "an export key: `peftflow export` reads it from an export YAML",
    "export_size": "an export key: `peftflow export` reads it from an export YAML",
    "export_device": "an export key: `peftflow export` reads it from an export YAML",
    "export_legacy_format": "an export key: `peftflow export` reads it from an export YAML",
    "video_max_pixels": "peftflow reads no video",
    "video_min_pixels": "peftflow reads no video",
    "video_fps": "peftflow reads no video",
    "video_maxlen": "peftflow reads no video",
    "cache_dir": "models resolve offline into peftflow's model cache",
    "low_cpu_mem_usage": "transformers loads on the meta device anyway",
    "use_fast_tokenizer": "the model's own tokenizer loads (fast where it has one)",
    "use_kv_cache": "generation keeps its cache; training never uses one",
    "infer_dtype": "held-out generation runs in the dtype the model is scored in",
    "data_shared_file_system": "prepared data is built once per machine under a file lock",
    "media_dir": "image paths resolve against the dataset folder",
    "use_swanlab": "metrics go to MLflow",
    "include_effective_tokens_per_second": "supervised tokens/s is logged at every logging step",
    "enable_torch_profiler": "not profiled; benchmarks/ measure time and memory",
    "ray_num_workers": "Prefect work pools run the jobs; torchrun runs processes (num_processes)",
    "ray_init_kwargs": "Prefect work pools run the jobs; torchrun runs processes (num_processes)",
    "master_addr": "multi-node runs read MASTER_ADDR from the environment",
    "master_port": "multi-node runs read MASTER_PORT from the environment",
    **dict.fromkeys(
        (
            "do_sample",
            "temperature",
            "top_p",
            "top_k",
            "num_beams",
            "max_length",
            "repetition_penalty",
            "length_penalty",
            "skip_special_tokens",
            "eval_num_beams",
        ),
        "held-out generation decodes greedily, so scores repeat; sampling is the server's setting",
    ),
    **dict.fromkeys(
        (
            "swanlab_project",
            "swanlab_workspace",
            "swanlab_run_name",
            "swanlab_mode",
            "swanlab_logdir",
            "swanlab_lark_webhook_url",
        ),
        "metrics go to MLflow",
    ),
    **dict.fromkeys(
        (
            "profiler_output_dir",
            "profiler_wait_steps",
            "profiler_warmup_steps",
            "profiler_active_steps",
            "profiler_repeat",
            "profiler_record_shapes",
            "profiler_profile_memory",
            "profiler_with_stack",
            "profile_modules",
        ),
        "not profiled; benchmarks/ measure time and memory",
    ),
    **dict.fromkeys(
        (
            "export_quantization_bit",
            "export_quantization_dataset",
            "export_quantization_nsamples",
            "export_quantization_maxlen",
            "export_hub_model_id",
        ),
        "an export key: `peftflow export` reads its export YAML",
    ),
    **dict.fromkeys(
        (
            "vllm_maxlen",
            "vllm_gpu_util",
            "vllm_enforce_eager",
            "vllm_max_lora_rank",
            "vllm_config",
            "sglang_maxlen",
            "sglang_mem_fraction",
            "sglang_tp_size",
            "sglang_config",
            "sglang_lora_backend",
        ),
        "inference-server settings: peftflow evaluates with transformers (infer_backend huggingface)",
    ),
}

# Keys refused when set to anything but the listed values (None: not set), with the reason.
REFUSED: dict[str, tuple[tuple[Any, ...], str]] = {
    "ref_model_adapters": (
        (None,),
        "not supported: give the reference as one model in ref_model (a merged model dir or registered merged version)",
    ),
    "ref_model_quantization_bit": (
        (None, 0),
        "not supported: the reference's log-probs are computed once, unquantised, and cached",
    ),
    "pref_bco_weight": ((None, 0, 0.0), "not supported: BCO's term is not trained; leave it 0"),
    "ld_alpha": ((None,), "not supported: LD-DPO's length weighting is not trained; leave it unset"),
    "push_to_hub": ((None, False), "peftflow publishes to the MLflow registry and never uploads to a hub"),
    "shift_attn": ((None, False), "not supported: LongLoRA's shifted sparse attention is not trained"),
    "disable_shuffling": ((None, False), "not supported: peftflow shuffles the rows (length-grouped, seeded)"),
    "image_max_pixels": (
        (None,),
        "not supported: images are resized by the model's own image processor; leave it unset",
    ),
    "image_min_pixels": (
        (None,),
        "not supported: images are resized by the model's own image processor; leave it unset",
    ),
}


def _family(keys: str, reason: str, allowed: tuple[Any, ...] = (None, False)) -> dict:
    return {k: (allowed, reason) for k in keys.split()}


# Methods, losses and stages LLaMA-Factory has and peftflow does not train: refused once set away from
# LLaMA-Factory's default, so a YAML that writes the default still loads.
REFUSED |= {
    **_family("use_galore galore_layerwise", "not supported: GaLore is not a peftflow method"),
    **_family(
        "galore_target galore_rank galore_update_interval galore_scale galore_proj_type",
        "read only with use_galore, which is not supported",
        (None, "all", 16, 200, 2.0, "std"),
    ),
    **_family("use_apollo apollo_layerwise apollo_scale_front", "not supported: APOLLO is not a peftflow method"),
    **_family(
        "apollo_target apollo_rank apollo_update_interval apollo_scale apollo_proj apollo_proj_type apollo_scale_type",
        "read only with use_apollo, which is not supported",
        (None, "all", 16, 200, 32.0, "random", "std", "channel"),
    ),
    **_family("use_badam badam_verbose", "not supported: BAdam is not a peftflow method", (None, False, 0)),
    **_family(
        "badam_mode badam_start_block badam_switch_mode badam_switch_interval badam_update_ratio badam_mask_mode",
        "read only with use_badam, which is not supported",
        (None, "layer", "ascending", 50, 0.05, "adjacent"),
    ),
    **_family("use_llama_pro", "not supported: LLaMA Pro block expansion is not a peftflow method"),
    **_family("use_adam_mini", "not supported: set optim to a transformers optimizer"),
    **_family("use_muon", "not supported: set optim to a transformers optimizer"),
    **_family("pure_bf16", "not supported: use bf16 (weights in bfloat16, autocast)"),
    **_family(
        "fp8 fp8_enable_fsdp_float8_all_gather", "not supported: FP8 training needs a GPU recipe peftflow does not have"
    ),
    **_family("fp8_backend", "read only with fp8, which is not supported", (None, "auto")),
    **_family("use_dft_loss use_asft_loss use_eaft_loss", "not supported: peftflow trains the stock token loss"),
    **_family("asft_alpha eaft_alpha", "read only with their losses, which are not supported", (None, 0.1, 1.0)),
    **_family("compute_accuracy", "not supported: held-out scores come from peftflow's evaluation"),
    **_family("create_new_adapter", "not supported: a run trains one new adapter on model_name_or_path"),
    **_family(
        "adapter_name_or_path adapter_folder",
        "give the adapter to start from as model_name_or_path (its base "
        "is merged with it); `peftflow export` reads adapter_name_or_path",
    ),
    **_family(
        "loraplus_lr_ratio loraplus_lr_embedding", "not supported: LoRA+ learning rates are not trained", (None, 1e-6)
    ),
    **_family("pissa_convert", "not supported: peftflow saves PiSSA adapters as plain LoRA itself"),
    **_family("pissa_iter", "not supported: PiSSA runs peft's exact SVD init", (None, 16)),
    **_family("module_dropout", "not supported: LoKr / LoHa are not peftflow methods", (None, 0, 0.0)),
    **_family(
        "oft_rank oft_block_size oft_target", "not supported: OFT is not a peftflow method", (None, 0, 32, "all")
    ),
    **_family(
        "freeze_trainable_layers freeze_trainable_modules freeze_extra_modules",
        "not supported: finetuning_type freeze is not a peftflow method",
        (None, 2, "all"),
    ),
    **_family("freeze_language_model", "not supported: a vision-language run trains LoRA on the language model"),
    **_family(
        "ppo_buffer_size ppo_epochs ppo_score_norm ppo_target ppo_whiten_rewards reward_model "
        "reward_model_adapters reward_model_quantization_bit reward_model_type",
        "not supported: stage ppo is not a peftflow stage",
        (None, False, 1, 4, 6.0, "lora"),
    ),
    **_family(
        "resize_vocab add_tokens add_special_tokens new_special_tokens_config init_special_tokens",
        "not supported: the vocabulary is the base model's",
        (None, False, "noise_init"),
    ),
    **_family("split_special_tokens", "not supported: special tokens are kept whole"),
    **_family("model_revision", "not supported: give a local dir or a registered version", (None, "main")),
    **_family("train_from_scratch", "not supported: a run fine-tunes a trained model"),
    **_family("mixture_of_depths", "not supported: mixture-of-depths conversion is not trained"),
    **_family("upcast_lmhead_output", "not supported: the loss is computed in float32 already"),
    **_family("block_diag_attn", "set neat_packing instead (packed rows attend only to themselves)"),
    **_family(
        "image_do_pan_and_scan crop_to_patches use_audio_in_video",
        "not supported: images go through the model's own image processor",
    ),
    **_family("audio_sampling_rate", "not supported: peftflow reads no audio", (None, 16000)),
    **_family("use_kt kt_use_lora_experts", "not supported: KTransformers is not a peftflow backend"),
    **_family(
        "kt_weight_path kt_expert_checkpoint_path kt_lora_expert_num kt_lora_expert_intermediate_size",
        "read only with use_kt, which is not supported",
    ),
    **_family("use_mca use_hyper_parallel", "not supported: peftflow trains with the HF Trainer (torchrun)"),
    **_family("hyper_parallel_args", "read only with use_hyper_parallel, which is not supported"),
    **_family("eval_dataset", "peftflow holds out val_size rows of the dataset for evaluation; set val_size"),
    **_family("eval_on_each_dataset", "not supported: the held-out rows are scored as one set"),
}


def refusal(key: str, value: Any) -> str | None:
    """The reason `key: value` is refused, or None."""
    allowed, reason = REFUSED.get(key, ((value,), ""))
    return None if value in allowed else reason


def unheard_note(keys: list[str]) -> str:
    """The warning for keys accepted without effect on the result: each with why."""
    speed_only, no_effect = SPEED_ONLY | V1_SPEED_ONLY, NO_EFFECT | V1_NO_EFFECT  # v1's own keys too
    parts = []
    for key in keys:
        if key in speed_only:
            parts.append(f"{key} (speed only: {speed_only[key]})")
        else:
            parts.append(f"{key} (no effect: {no_effect[key]})")
    return "; ".join(parts)


# Keys read under peftflow's own name (config/load.py moves them; a peftflow key written beside wins).
TRANSLATED: dict[str, str] = {
    "disable_gradient_checkpointing": "true is `gradient_checkpointing: false`",
    "max_new_tokens": "is `evaluation.max_new_tokens`: the held-out generation budget",
    "infer_backend": "`huggingface` is what evaluation generates with; `vllm` / `sglang` refused (serve the "
    "registered version with vLLM instead)",
}


def treatment(key: str, fields: dict) -> tuple[str, str]:
    """(what peftflow does with LLaMA-Factory's `key`, why or how): `fields` are RunConfig's."""
    if is_secret_key(key):  # config/checks.py refuse_credentials, before anything else reads it
        return "refused when set", "named like a credential: credentials come from the environment or a Prefect Secret"
    if key in fields:
        return "honoured", fields[key].title or key
    if key in TRANSLATED:
        return "honoured", TRANSLATED[key]
    if key in SPEED_ONLY:
        return "speed only (warning)", SPEED_ONLY[key]
    if key in NO_EFFECT:
        return "no effect (warning)", NO_EFFECT[key]
    if key in REFUSED:
        allowed, reason = REFUSED[key]
        given = ", ".join(repr(v) for v in allowed if v is not None)
        return "refused" + (f" unless {given}" if given else " when set"), reason
    return "refused (unknown key)", "not a key peftflow reads"
