"""What can be known about a run before it trains, checked against the resolved model: every
mistake here would otherwise surface minutes or hours into a GPU job.

`check_training_setup` raises a one-line UserError naming the key. It reads the model's config and
builds an empty (meta-device) skeleton of it: no weights are loaded. `check_run` is what `peftflow
run` checks before the flow starts: that, plus the model resolved and the data prepared.
"""

from __future__ import annotations

import importlib.util
import re

from peftflow import preflight_checks
from peftflow.config import RunConfig
from peftflow.errors import UserError
from peftflow.methods import get_method
from peftflow.models import vision
from peftflow.models.resolve import ResolvedModel, resolve_model


def check_run(cfg: RunConfig, offline_store: bool = False) -> None:
    """Everything `peftflow run` checks before the flow starts: the model (or student), the
    training setup, the data and the teacher's prompts, the guard set's names first (a typo fails
    before minutes of tokenising the training data). `offline_store`: the run store is not probed."""
    from peftflow.data import prepare_dataset, resolve_datasets
    from peftflow.store import open_store

    open_store(cfg.storage)  # PEFTFLOW_STORAGE is checked here; the `storage` key by the config
    preflight_checks.check_registered_model_name(cfg.registry.name)
    preflight_checks.probe_run_store(cfg.storage, offline_store)
    model_path = trained_model(cfg).path
    check_training_setup(cfg, model_path)
    guard = cfg.guard_config() if cfg.promotion.guard_dataset else None
    if guard:
        resolve_datasets(guard.dataset_dir, guard.dataset_names)
    prepare_dataset(cfg, model_path)
    if guard:
        prepare_dataset(guard, model_path)
    if cfg.kd_unlabeled_dataset:  # the teacher's prompts read (not yet answered): a bad row fails here
        from peftflow.data.prepare import prompt_sources, read_prompts

        read_prompts(cfg, prompt_sources(cfg))


def trained_model(cfg: RunConfig) -> ResolvedModel:
    """The model the run trains: the base, or in a distillation run the student (checked against
    its teacher's tokenizer)."""
    if cfg.stage == "distill":
        from peftflow.distill.teacher import resolve_student, resolve_teacher  # peft: only when distilling

        return resolve_student(cfg, resolve_teacher(cfg))
    return resolve_model(cfg.model_name_or_path, cfg.allow_pickle_weights, cfg.storage)


def check_training_setup(cfg: RunConfig, model_path: str) -> None:
    vision.check_config_fits(cfg, model_path)
    _check_schedule_and_optimizer(cfg)
    preflight_checks.build_optimizer_and_schedule(cfg)
    _check_quantization(cfg)
    _check_serving_extras(cfg, model_path)
    skeleton = _skeleton(cfg, model_path)
    if cfg.gradient_checkpointing is True and not skeleton.supports_gradient_checkpointing:
        raise UserError(f"gradient_checkpointing: true, but the model at {model_path} ({type(skeleton).__name__}) "
                        "does not support it; set it to auto or false")
    if get_method(cfg).traits.family in ("lora", "ia3"):  # the methods that name modules to adapt
        _check_modules("lora_target", cfg.lora_target, skeleton, model_path)
    _check_modules("additional_target", cfg.additional_target, skeleton, model_path)


def _check_schedule_and_optimizer(cfg: RunConfig) -> None:
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    schedulers = [s.value for s in SchedulerType]
    if cfg.lr_scheduler_type not in schedulers:
        raise UserError(f"lr_scheduler_type: unknown scheduler '{cfg.lr_scheduler_type}'{_nearest(cfg.lr_scheduler_type, schedulers)}")
    optimizers = [o.value for o in OptimizerNames]
    if cfg.optim not in optimizers:
        raise UserError(f"optim: unknown optimizer '{cfg.optim}'{_nearest(cfg.optim, optimizers)}")
    if ("8bit" in cfg.optim or cfg.optim.startswith("paged_")) and not importlib.util.find_spec("bitsandbytes"):
        raise UserError(f"optim: {cfg.optim} needs bitsandbytes, which is not installed")


def _check_quantization(cfg: RunConfig) -> None:
    if cfg.quantization_bit and not importlib.util.find_spec("bitsandbytes"):
        raise UserError(f"quantization_bit: {cfg.quantization_bit} needs bitsandbytes, which is not installed")


def _check_serving_extras(cfg: RunConfig, model_path: str) -> None:
    """The optional packages a run uses after training (lm-eval, llama.cpp's converter) are here."""
    from peftflow.evaluation import harness

    harness.check_available(cfg)
    if cfg.registry.gguf_outtype:
        from peftflow.serving import gguf

        gguf.check_converter("registry.gguf_outtype")
        if vision.is_vision_language(model_path):
            raise UserError(f"registry.gguf_outtype: the model at {model_path} is vision-language; "
                            "peftflow exports text models to GGUF only")


def _skeleton(cfg: RunConfig, model_path: str):
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
    with init_empty_weights():
        return vision.model_class(model_path).from_config(config, trust_remote_code=cfg.trust_remote_code)


def _check_modules(key: str, targets, model, model_path: str) -> None:
    """Each named module must exist (peft matches a name against the end of a module path), a
    regex must match some module path; `all` and unset are always fine."""
    if targets in (None, "all"):
        return
    paths = [name for name, _ in model.named_modules() if name]
    if isinstance(targets, str):
        if not any(re.fullmatch(targets, p) for p in paths):
            raise UserError(f"{key}: the regex {targets!r} matches no module of the model at {model_path}")
        return
    names = {p.rsplit(".", 1)[-1] for p in paths}
    missing = [t for t in targets if t not in names and not any(p == t or p.endswith(f".{t}") for p in paths)]
    if missing:
        linear = sorted({p.rsplit(".", 1)[-1] for p, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise UserError(f"{key}: the model at {model_path} has no module named {', '.join(missing)} "
                        f"(its linear layers: {', '.join(linear)})")


def _nearest(value: str, choices: list[str]) -> str:
    import difflib

    match = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""
