"""What can be known about a run before it trains: every mistake here would otherwise surface
minutes or hours into a GPU job.

`preflight` is the one function `peftflow validate` and `peftflow run` call: it runs `CHECKS` in
order, each raising a one-line UserError naming the key, file or row; bad data raises DataProblems,
whose report lists every problem. So a config that `validate` accepts is never refused by `run`
before training. `check_training_setup` reads the model's config and builds an empty (meta-device)
skeleton of it: no weights are loaded.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import re
import sys
from dataclasses import dataclass

from peftflow import preflight_checks
from peftflow.config import RunConfig
from peftflow.data import PreparedData, prepare_dataset, resolve_datasets
from peftflow.data.prepare import prepared_report
from peftflow.data.report import DataReport
from peftflow.errors import UserError
from peftflow.methods import get_method
from peftflow.models import moe, vision
from peftflow.stages import get_stage, get_workflow
from peftflow.stages.workflow import RunModels
from peftflow.store import open_store


@dataclass
class Preflight:
    """What the checks found on the way: the models the run uses, its prepared data and their report."""

    cfg: RunConfig
    offline_store: bool = False  # --offline-store: the run store is not probed (a laptop without its credentials)
    models: RunModels | None = None
    data: PreparedData | None = None
    report: DataReport | None = None


def _run_store(p: Preflight) -> None:
    open_store(p.cfg.storage)  # PEFTFLOW_STORAGE is checked here; the `storage` key by the config
    preflight_checks.probe_run_store(p.cfg.storage, p.offline_store)  # listed, written, read and removed once


def _registered_model_name(p: Preflight) -> None:
    preflight_checks.check_registered_model_name(p.cfg.registry.name)  # MLflow's rules, and the server's


def _models(p: Preflight) -> None:
    p.models = get_workflow(p.cfg).resolve(p.cfg)  # the base, or a stage's student and teacher


def _training_setup(p: Preflight) -> None:
    check_training_setup(p.cfg, p.models.model.path)


def _checkpoints(p: Preflight) -> None:
    from peftflow.training.resume import check_resume_source

    check_resume_source(p.cfg)  # an explicit resume_from_checkpoint path that cannot resume exactly
    if p.cfg.save_only_model and p.cfg.save_strategy != "no":
        logging.getLogger("peftflow.config").warning(
            "save_only_model: true: checkpoints hold no optimizer or scheduler state, so a killed or retried run "
            "restarts from scratch instead of resuming"
        )


def _guard_names(p: Preflight) -> None:
    if p.cfg.promotion.guard_dataset:  # a typo fails before minutes of tokenising the training data
        guard = p.cfg.guard_config()
        resolve_datasets(guard.dataset_dir, guard.dataset_names)


def _stage_inputs(p: Preflight) -> None:
    get_workflow(p.cfg).check_inputs(p.cfg)  # e.g. the teacher's prompts, read (not yet answered)


def _training_data(p: Preflight) -> None:
    p.data = prepare_dataset(p.cfg, p.models.model.path)  # cached: the flow's prepare-dataset reuses it
    p.report = prepared_report(p.cfg, p.models.model.path, p.data)


def _guard_data(p: Preflight) -> None:
    if p.cfg.promotion.guard_dataset:
        prepare_dataset(p.cfg.guard_config(), p.models.model.path)


CHECKS = (
    _run_store,
    _registered_model_name,
    _models,
    _training_setup,
    _checkpoints,
    _guard_names,
    _stage_inputs,
    _training_data,
    _guard_data,
)


def preflight(cfg: RunConfig, offline_store: bool = False) -> Preflight:
    """Everything checked before training, for `peftflow validate` and `peftflow run` alike."""
    found = Preflight(cfg, offline_store)
    for check in CHECKS:
        check(found)
    return found


def check_training_setup(cfg: RunConfig, model_path: str) -> None:
    vision.check_config_fits(cfg, model_path)
    _check_schedule_and_optimizer(cfg)
    preflight_checks.build_optimizer_and_schedule(cfg)
    _check_quantization(cfg)
    _check_serving_extras(cfg, model_path)
    skeleton = _skeleton(cfg, model_path)
    if cfg.gradient_checkpointing is True and not skeleton.supports_gradient_checkpointing:
        raise UserError(
            f"gradient_checkpointing: true, but the model at {model_path} ({type(skeleton).__name__}) "
            "does not support it; set it to auto or false"
        )
    if cfg.neat_packing:
        _check_packed_rows_kept_apart(skeleton, model_path)
    family = get_method(cfg).traits.family
    if family == "lora" and moe.is_moe(skeleton) and isinstance(cfg.lora_target, list):
        _check_moe_targets(cfg.lora_target, skeleton, model_path)
    elif family in ("lora", "ia3"):  # the methods that name modules to adapt
        _check_modules("lora_target", cfg.lora_target, skeleton, model_path)
    _check_router_loss(cfg, skeleton, model_path)
    _check_vllm_experts(cfg, skeleton, model_path)
    _check_modules("additional_target", cfg.additional_target, skeleton, model_path)


def _check_schedule_and_optimizer(cfg: RunConfig) -> None:
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    schedulers = [s.value for s in SchedulerType]
    if cfg.lr_scheduler_type not in schedulers:
        raise UserError(
            "lr_scheduler_type: unknown scheduler "
            f"'{cfg.lr_scheduler_type}'{_nearest(cfg.lr_scheduler_type, schedulers)}"
        )
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
            raise UserError(
                f"registry.gguf_outtype: the model at {model_path} is vision-language; "
                "peftflow exports text models to GGUF only"
            )
        # the merge has the base's config and tokenizer: what the converter says of the base holds for it
        if problem := gguf.conversion_problem(model_path):
            raise UserError(
                f"registry.gguf_outtype: llama.cpp's converter cannot convert the model at {model_path}: {problem}"
            )


def _skeleton(cfg: RunConfig, model_path: str):
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
    with init_empty_weights():
        return vision.model_class(model_path).from_config(config, trust_remote_code=cfg.trust_remote_code)


def _check_packed_rows_kept_apart(model, model_path: str) -> None:
    """neat_packing sends no attention mask: packed rows stay apart only where the model builds its
    mask with transformers' masking_utils, which finds the rows from the restarting position ids. A
    recurrent model (Mamba, RWKV) or one with its own mask code would let them see each other."""
    decoder = model.get_decoder()  # a vision-language model's: its language model
    if "masking_utils" not in inspect.getsource(sys.modules[type(decoder).__module__]):
        raise UserError(
            f"neat_packing: the model at {model_path} ({type(model).__name__}) does not build its attention "
            "mask from position ids, so packed rows would attend to each other; drop neat_packing"
        )


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
        raise UserError(
            f"{key}: the model at {model_path} has no module named {', '.join(missing)} "
            f"(its linear layers: {', '.join(_linear_names(model))})"
        )


def _linear_names(model) -> list[str]:
    return sorted({p.rsplit(".", 1)[-1] for p, m in model.named_modules() if type(m).__name__ == "Linear"})


def _check_moe_targets(targets: list[str], model, model_path: str) -> None:
    """On an MoE, a lora_target name may also be an expert parameter or the router (peftflow.models.moe)."""
    if unknown := moe.lora_targets(model, targets).unknown:
        routers = sorted({p.rsplit(".", 1)[-1] for p in moe.routers(model)})
        raise UserError(
            f"lora_target: the model at {model_path} has no module or expert parameter named {', '.join(unknown)} "
            f"(its linear layers: {', '.join(_linear_names(model))}; "
            f"experts: {', '.join(moe.expert_parameters(model))}; router: {', '.join(routers)})"
        )


def _check_router_loss(cfg: RunConfig, model, model_path: str) -> None:
    if not cfg.moe_aux_loss_coef:
        return
    if moe.aux_loss_attribute(model.config) is None:
        raise UserError(
            f"moe_aux_loss_coef: the model at {model_path} ({type(model).__name__}) has no router "
            "load-balancing loss (not a mixture-of-experts model transformers computes one for)"
        )
    if not get_stage(cfg).lm_loss:
        raise UserError(
            f"moe_aux_loss_coef: stage {cfg.stage} computes its own loss, without the router's; drop the key"
        )


def _check_vllm_experts(cfg: RunConfig, model, model_path: str) -> None:
    """An unmerged vLLM-ready adapter must not adapt stacked experts (serving/checks.py says why)."""
    serves_adapter = cfg.registry.vllm_ready and not cfg.should_merge and get_method(cfg).traits.family == "lora"
    if not serves_adapter or not moe.is_moe(model) or isinstance(cfg.lora_target, str) and cfg.lora_target != "all":
        return
    if parameters := moe.lora_targets(model, cfg.lora_target).parameters:
        raise UserError(
            f"registry.vllm_ready: lora_target adapts {', '.join(parameters)} of the mixture-of-experts model at "
            f"{model_path}, which vLLM does not serve as an adapter; merge, or name attention modules only"
        )


def _nearest(value: str, choices: list[str]) -> str:
    import difflib

    match = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""
