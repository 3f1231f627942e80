"""A sweep's plan: the variants of one base config, each validated as the whole config it trains.

A sweep is a grid (every combination of the listed values: `--grid lora_rank=4,8,16` or the YAML's
`sweep: {grid: {lora_rank: [4, 8, 16]}}`) and/or a list of variants (each a mapping of keys, with
an optional `name`); given both, every variant is crossed with every grid point. Variants share one
prepared dataset, one held-out set, one registered model and one gate, so the keys that shape those
are refused. Every variant is checked before anything runs: one bad variant is one line naming it.
"""

from __future__ import annotations

import difflib
import itertools
from dataclasses import dataclass
from typing import Any

from peftflow.config import RunConfig
from peftflow.config.form import FLAT
from peftflow.config.load import parse_config, read_yaml
from peftflow.data.fingerprint import OPTIONS
from peftflow.errors import UserError
from peftflow.preflight import check_training_setup, preflight
from peftflow.stages import STAGES, get_stage

SECTION_KEYS = ("grid", "variants", "max_parallel")

# What every variant must share, and why (the reason ends the refusal's line).
_SHARED = {
    **dict.fromkeys(
        (
            "model_name_or_path",
            "dataset",
            "dataset_dir",
            "template",
            "train_dataset",
            "enable_thinking",
            "preserve_thinking",
            "tool_format",
            "default_system",
            "mix_strategy",
            "interleave_probs",
            *OPTIONS,
        ),
        "it shapes the prepared data, and every variant trains and is scored on the same rows",
    ),
    **dict.fromkeys(
        (
            "registry",
            "promotion",
            "evaluation",
            "storage",
            "output_dir",
            "merge",
            "merge_tolerance",
            "quantized_merge_tolerance",
        ),
        "the sweep has one registered model, one gate, one held-out scoring and one run store",
    ),
    **dict.fromkeys(
        ("stage", *(k for s in STAGES.values() if not s.sweepable for k in s.options)),
        f"sweeps train {', '.join(s.name for s in STAGES.values() if s.sweepable)} variants; "
        f"stage {', '.join(s.name for s in STAGES.values() if not s.sweepable)} runs one at a time "
        "(`peftflow run`)",
    ),
}


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict[str, Any]  # the keys this variant sets over the base config
    config: RunConfig


@dataclass(frozen=True)
class SweepPlan:
    base: RunConfig
    variants: tuple[Variant, ...]
    max_parallel: int
    swept_keys: tuple[str, ...]  # keys whose value differs between variants (the plots' x axes)


def parse_scalar(text: str) -> Any:
    """A value as written on the command line: int, float, bool, null, else the string itself."""
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "null": None, "none": None}.get(text.lower(), text)


def parse_grid_option(option: str) -> tuple[str, list[Any]]:
    """`KEY=V1,V2,...` -> (KEY, [V1, V2, ...])."""
    key, sep, values = option.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise UserError(f"--grid {option!r}: expected KEY=V1,V2,... (e.g. --grid lora_rank=4,8,16)")
    return key.strip(), [parse_scalar(v) for v in values.split(",")]


def grid_from_options(options: list[str]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for option in options:
        key, values = parse_grid_option(option)
        if key in grid:
            raise UserError(f"--grid {key}: given twice; list every value in one --grid {key}=V1,V2,...")
        grid[key] = values
    return grid


def read_section(section: Any, source: str) -> tuple[dict[str, list[Any]], list[dict[str, Any]], int | None]:
    """The YAML's `sweep:` section -> (grid, variants, max_parallel or None)."""
    if not isinstance(section, dict):
        raise UserError(f"{source}: key 'sweep': expected a mapping with {', '.join(SECTION_KEYS)}")
    for key in section:
        if key not in SECTION_KEYS:
            match = difflib.get_close_matches(str(key), SECTION_KEYS, n=1)
            raise UserError(
                f"{source}: unknown key 'sweep.{key}'" + (f" (did you mean 'sweep.{match[0]}'?)" if match else "")
            )
    grid = section.get("grid") or {}
    if not isinstance(grid, dict):
        raise UserError(f"{source}: key 'sweep.grid': expected a mapping of keys to lists of values")
    grid = {k: v if isinstance(v, list) else [v] for k, v in grid.items()}
    variants = section.get("variants") or []
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        raise UserError(f"{source}: key 'sweep.variants': expected a list of mappings of keys to values")
    return grid, variants, section.get("max_parallel")


def plan_sweep(
    base: RunConfig,
    grid: dict[str, list[Any]] | None = None,
    variants: list[dict[str, Any]] | None = None,
    max_parallel: int = 1,
    source: str = "sweep",
) -> SweepPlan:
    """Every variant's config, validated; the first problem is one UserError line."""
    grid, variants = dict(grid or {}), [dict(v) for v in variants or []]
    if not grid and not variants:
        raise UserError(
            f"{source}: nothing to sweep: give --grid KEY=V1,V2 or a `sweep:` section with grid or variants"
        )
    if not isinstance(max_parallel, int) or isinstance(max_parallel, bool) or max_parallel < 1:
        raise UserError(f"{source}: max_parallel must be a whole number >= 1 (got {max_parallel!r})")
    if not get_stage(base).sweepable:
        raise UserError(f"{source}: stage '{base.stage}': {_SHARED['stage']}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{source}: grid key '{key}': expected a non-empty list of values")
    named = [(v.pop("name", None), v) for v in variants] or [(None, {})]
    points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    flat = base.model_dump(mode="json", context=FLAT)
    planned, seen = [], {}
    for (given_name, keys), point in itertools.product(named, points):
        overrides = {**keys, **point}
        name = str(given_name) if given_name else _name(overrides)
        if given_name and point:
            name += " " + _name(point)
        for key in overrides:
            _check_key(key, name, source)
        config, _ = parse_config({**flat, **overrides}, source=f"{source} variant '{name}'")
        identity = config.fingerprint()
        if identity in seen:
            raise UserError(f"{source}: variants '{seen[identity]}' and '{name}' are the same config")
        seen[identity] = name
        planned.append(Variant(name, overrides, config))
    if len(planned) < 2:
        raise UserError(f"{source}: a sweep compares at least two variants (this one has {len(planned)})")
    swept = tuple(
        k
        for k in dict.fromkeys(k for v in planned for k in v.overrides)
        if len({repr(getattr(v.config, k)) for v in planned}) > 1
    )
    return SweepPlan(base, tuple(planned), max_parallel, swept)


def _name(overrides: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in overrides.items()) or "base"


def _check_key(key: str, variant: str, source: str) -> None:
    if key in _SHARED:
        raise UserError(f"{source} variant '{variant}': key '{key}' cannot vary in a sweep: {_SHARED[key]}")
    if key not in RunConfig.model_fields:
        match = difflib.get_close_matches(key, list(RunConfig.model_fields), n=1)
        raise UserError(
            f"{source} variant '{variant}': unknown key '{key}'" + (f" (did you mean '{match[0]}'?)" if match else "")
        )


@dataclass(frozen=True)
class SweepRequest:
    """A sweep as the `sweep` flow takes it: the base config and what varies."""

    base: RunConfig
    grid: dict[str, list[Any]]
    variants: list[dict[str, Any]]
    max_parallel: int
    unused: list[str]  # keys of the base config accepted but not used


def read_sweep_file(
    path: str, grid_options: list[str], max_parallel: int | None = None
) -> tuple[SweepRequest, SweepPlan]:
    """A run config YAML with an optional `sweep:` section, plus `--grid` options (a key given both
    ways takes the command line's values) and `--max-parallel`; every variant validated."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of keys to values, got {type(raw).__name__}")
    raw = dict(raw)
    grid, variants, section_parallel = read_section(raw.pop("sweep"), path) if "sweep" in raw else ({}, [], None)
    base, unused = parse_config(raw, source=str(path))
    grid |= grid_from_options(grid_options)
    request = SweepRequest(base, grid, variants, max_parallel or section_parallel or 1, unused)
    return request, plan_sweep(base, grid, variants, request.max_parallel, source=str(path))


def check_sweep(plan: SweepPlan, offline_store: bool = False) -> None:
    """What `peftflow sweep` checks before the flow starts: the base's model and data (as
    `peftflow run` does), then what each variant trains (modules, optimizer, schedule, 4-bit)."""
    model_path = preflight(plan.base, offline_store).models.model.path
    for variant in plan.variants:
        try:
            check_training_setup(variant.config, model_path)
        except UserError as e:
            raise UserError(f"sweep variant '{variant.name}': {e}") from None
