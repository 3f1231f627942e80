"""The layout stays true: read from the code's own imports (function-local ones included), the core
has no import cycle and never imports up the layers or Prefect, flows leave the MLflow registry to
tasks, and modules and functions stay short."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# imports point down: flows, services -> tasks -> peftflow (the CLI in flows/ starts the relay in services/)
LAYERS = {"peftflow": 0, "tasks": 1, "flows": 2, "services": 2}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def _modules() -> dict[str, Path]:
    found = {}
    for top in LAYERS:
        for path in (ROOT / top).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


MODULES = _modules()


def imports_of(name: str, path: Path) -> set[str]:
    """Every module this file imports, at any depth of the file: `from a.b import c` counts a.b and,
    when it is a module, a.b.c."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return out


GRAPH = {name: {t for t in imports_of(name, path) if t in MODULES and t != name} for name, path in MODULES.items()}


def _cycle_from(start: str) -> list[str] | None:
    """A path start -> ... -> start through core modules, if there is one (depth-first)."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in GRAPH[node]:
            if not nxt.startswith("peftflow."):
                continue
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def test_no_import_cycle_in_the_core():
    cycles = [c for name in sorted(GRAPH) if name.startswith("peftflow.") and (c := _cycle_from(name))]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def test_imports_point_down_the_layers():
    def layer(name: str) -> int:
        return LAYERS[name.split(".")[0]]

    upward = sorted(f"{a} -> {b}" for a, targets in GRAPH.items() for b in targets if layer(b) > layer(a))
    assert not upward, upward


def test_the_core_never_imports_prefect():
    offenders = sorted(
        name
        for name, path in MODULES.items()
        if name.startswith("peftflow")
        and any(t == "prefect" or t.startswith("prefect.") for t in imports_of(name, path))
    )
    assert not offenders, offenders


def test_modules_and_functions_are_short_enough_to_read_at_once():
    long_modules, long_functions = [], []
    for name, path in MODULES.items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{name} ({len(text.splitlines())} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long_functions.append(f"{name}.{node.name} ({lines} lines)")
    assert not long_modules and not long_functions, (long_modules, long_functions)


def test_the_walk_sees_function_local_imports():
    """The walk is only as good as what it reads: a function-local import is an edge too."""
    assert "peftflow.data.prepare" in GRAPH["peftflow.stages.distill.workflow"]  # imported inside check_inputs
    assert "services.relay" in GRAPH["flows.cli"]  # imported inside the `relay` command


def _stage_tests(tree: ast.AST) -> list[int]:
    """Lines that compare something's `.stage` (`cfg.stage == "distill"`, `!=`, `in`)."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare)
        and any(isinstance(side, ast.Attribute) and side.attr == "stage" for side in (node.left, *node.comparators))
    ]


def test_only_the_stages_package_tells_stages_apart():
    """What differs between stages lives in peftflow/stages/ (its Stage and Workflow); everything
    else asks the stage, never tests its name, so adding a stage is one package and one line."""
    offenders = [
        f"{name}:{line}"
        for name, path in MODULES.items()
        if not name.startswith("peftflow.stages")
        for line in _stage_tests(ast.parse(path.read_text()))
    ]
    assert not offenders, offenders
    assert _stage_tests(ast.parse('if cfg.stage == "distill": pass')) == [1]  # what the walk catches
    assert _stage_tests(ast.parse('if "dpo" != config.stage: pass')) == [1]


def _defines_a_flow(source: str) -> bool:
    """A function of the module is decorated with Prefect's `@flow` (`@flow(...)`, `@prefect.flow`)."""

    def is_flow(decorator: ast.expr) -> bool:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        return (isinstance(target, ast.Name) and target.id == "flow") or (
            isinstance(target, ast.Attribute) and target.attr == "flow"
        )

    return any(
        isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(map(is_flow, node.decorator_list))
        for node in ast.walk(ast.parse(source))
    )


REGISTRY_CORE = "peftflow.mlflow_io"


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _reaches_the_registry(module: str, name: str) -> bool:
    """`from module import name` hands over something that can call MLflow: a function, or a module of
    them. A constant cannot, and the classes of `peftflow.mlflow_io` are data (`ModelVersionRef`)."""
    import importlib
    import inspect

    thing = getattr(importlib.import_module(module), name, None)
    if thing is None:  # a submodule its package has not imported yet
        thing = importlib.import_module(f"{module}.{name}")
    return inspect.ismodule(thing) or (callable(thing) and not inspect.isclass(thing))


def registry_imports(source: str) -> list[str]:
    """What a module imports (at any depth) that reads or writes the MLflow registry: `mlflow` itself
    or anything from it (`MlflowClient`), and the functions and modules of `peftflow.mlflow_io`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if _within(a.name, "mlflow") or _within(a.name, REGISTRY_CORE)]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += [
                f"{node.module}.{a.name}"
                for a in node.names
                if _within(node.module, "mlflow")
                or (_within(f"{node.module}.{a.name}", REGISTRY_CORE) and _reaches_the_registry(node.module, a.name))
            ]
    return found


def test_flows_leave_the_registry_to_tasks():
    """Flows only compose: a registry read or write is a task (one core call, a task run in the UI),
    a promotion decision is the core's (`peftflow/promotion.py`). So a module under flows/ that
    defines a Prefect `@flow` imports neither `mlflow` (`MlflowClient`) nor a function or module of
    `peftflow.mlflow_io`. The rule goes by the kind of the imported name, resolved by importing it:
    constants (`CHAMPION`, `OUTSIDE_REASON`) and classes (`ModelVersionRef`, the data tasks hand
    back) are allowed; anything else callable is a way to the registry. flows/ modules with no
    `@flow` (the CLI, the approval form) are entry points and helpers, not flows."""
    flows = {name: path.read_text() for name, path in MODULES.items() if name.startswith("flows.")}
    flows = {name: source for name, source in flows.items() if _defines_a_flow(source)}
    assert {"flows.finetune", "flows.promote", "flows.on_promotion"} <= set(flows)
    offenders = {name: found for name, source in sorted(flows.items()) if (found := registry_imports(source))}
    assert not offenders, offenders


def test_the_registry_rule_tells_functions_from_constants_and_classes():
    """The rule above is only as good as this: the imports flows/promote.py had before issue 32 (and
    the other ways to the same functions) are caught, a constant and a class are not."""
    source = """
from mlflow import MlflowClient
from peftflow.mlflow_io.aliases import CHALLENGER, CHAMPION, PREVIOUS, move_champion, rollback
from peftflow.mlflow_io.versions import ModelVersionRef, get_version_by_alias


def promote():
    import mlflow.exceptions
    import peftflow.mlflow_io.aliases
    from peftflow import mlflow_io
    from peftflow.mlflow_io import outside_moves
"""
    assert registry_imports(source) == [
        "mlflow.MlflowClient",
        "peftflow.mlflow_io.aliases.move_champion",
        "peftflow.mlflow_io.aliases.rollback",
        "peftflow.mlflow_io.versions.get_version_by_alias",
        "mlflow.exceptions",
        "peftflow.mlflow_io.aliases",
        "peftflow.mlflow_io",
        "peftflow.mlflow_io.outside_moves",
    ]
    assert _defines_a_flow("from prefect import flow\n\n@flow(name='x')\ndef x(): ...\n")
    assert not _defines_a_flow("from prefect import task\n\n@task\ndef x(): ...\n")
