"""Mixture-of-experts models as transformers 5 holds them, and what LoRA adapts on them.

An MoE layer keeps its experts as stacked 3-D parameters of one module (`mlp.experts.gate_up_proj`
of shape (experts, 2 x width, hidden), `mlp.experts.down_proj` (experts, hidden, width)) and its
router as a sibling module holding a 2-D weight (`mlp.gate`; gpt-oss: `mlp.router`). peft reaches
the experts through `target_parameters`, not `target_modules`.

`lora_target: all` adapts every linear layer but the output head, and the experts, and leaves the
router frozen: peft's own `all-linear` would put LoRA on the router too, which shifts which experts
see each token and is kept frozen by most MoE recipes. A `lora_target` list can name an expert
parameter (`gate_up_proj`, `experts.down_proj`) or the router (`gate`) to adapt it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

ROUTER_NAMES = ("gate", "router")  # siblings of `experts` that route; also Qwen2-MoE's shared_expert_gate
# config attribute of the router's load-balancing loss coefficient, by family (LLaMA-Factory's list)
AUX_LOSS_ATTRIBUTES = ("router_aux_loss_coef", "aux_loss_alpha", "aux_loss_coef")


@dataclass(frozen=True)
class LoraTargets:
    """What peft's LoraConfig gets: module names, parameter names, and the names no part matched."""

    modules: list[str]
    parameters: list[str]
    unknown: list[str]


def _stacked(module: nn.Module) -> list[str]:
    """Names of the module's own stacked (3-D) parameters."""
    return [name for name, p in module.named_parameters(recurse=False) if p.dim() == 3]


def _expert_modules(model) -> dict[str, nn.Module]:
    """Module path -> module for each `experts` module holding stacked parameters."""
    return {name: m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] == "experts" and _stacked(m)}


def is_moe(model) -> bool:
    return bool(_expert_modules(model))


def expert_parameters(model) -> list[str]:
    """The stacked expert parameters as peft's target_parameters names them: `experts.<name>`."""
    return sorted({f"experts.{name}" for module in _expert_modules(model).values() for name in _stacked(module)})


def routers(model, experts: dict[str, nn.Module] | None = None) -> list[str]:
    """Module paths of the routers: an `experts` module's siblings named gate / router (or ending in _gate)."""
    found = []
    for path in experts if experts is not None else _expert_modules(model):
        block = path.rsplit(".", 1)[0]
        for name, _ in model.get_submodule(block).named_children():
            if name in ROUTER_NAMES or name.endswith("_gate"):
                found.append(f"{block}.{name}")
    return found


def lora_targets(model, lora_target) -> LoraTargets:
    """Resolve `lora_target` (`all` or a list of names) on an MoE model into peft's two lists.

    A name is a module target where it ends the path of an `nn.Linear` (peft's suffix rule), a
    parameter target where it ends the path of a stacked expert parameter, and `<name>.weight`
    where it names a router. A name can be both (Qwen2-MoE's shared expert `down_proj` beside the
    experts' `down_proj`)."""
    expert_modules = _expert_modules(model)
    router_paths = routers(model, expert_modules)
    head = model.get_output_embeddings()
    linear = [
        path
        for path, m in model.named_modules()
        if isinstance(m, nn.Linear) and m is not head and path not in router_paths
    ]
    experts = [f"{path}.{name}" for path, module in expert_modules.items() for name in _stacked(module)]
    if lora_target == "all":
        modules = sorted({path.rsplit(".", 1)[-1] for path in linear})
        return LoraTargets(modules, sorted({f"experts.{p.rsplit('.', 1)[-1]}" for p in experts}), [])
    modules, parameters, unknown = [], [], []
    for name in lora_target:
        hit = False
        if any(_ends(path, name) for path in linear):
            modules.append(name)
            hit = True
        if any(_ends(path, name) for path in experts):
            parameters.append(name)
            hit = True
        if any(_ends(path, name) for path in router_paths):
            parameters.append(f"{name}.weight")
            hit = True
        if not hit:
            unknown.append(name)
    return LoraTargets(modules, parameters, unknown)


def _ends(path: str, name: str) -> bool:
    return path == name or path.endswith(f".{name}")


def rank_patterns(parameters: list[str], rank: int, alpha: int) -> dict:
    """`gate_up_proj` stacks two projections (gate and up), each of rank r in a per-projection
    recipe: rank 2r and alpha 2 x alpha keep that recipe's capacity and scale, as peft's own
    mapping of `all-linear` onto transformers 5 experts does."""
    if not any(p.endswith("gate_up_proj") for p in parameters):
        return {}
    return {"rank_pattern": {r".*\.gate_up_proj": 2 * rank}, "alpha_pattern": {r".*\.gate_up_proj": 2 * alpha}}


def aux_loss_attribute(config) -> str | None:
    """The config attribute holding the router's load-balancing loss coefficient; None when the
    model has none (not an MoE, or one transformers computes no such loss for)."""
    if not hasattr(config, "output_router_logits"):
        return None
    return next((a for a in AUX_LOSS_ATTRIBUTES if hasattr(config, a)), None)


def aux_loss_overrides(config, coef: float) -> dict:
    """LLaMA-Factory's moe_aux_loss_coef: config overrides that make the model add `coef` x the
    router's load-balancing loss to its training loss (from_pretrained applies them to the config)."""
    return {"output_router_logits": True, aux_loss_attribute(config): coef}
