"""The layout stays true: read from the code's own imports (function-local ones included), the core
has no import cycle and never imports up the layers or Prefect, and modules and functions stay short."""

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
    offenders = sorted(name for name, path in MODULES.items() if name.startswith("peftflow")
                       and any(t == "prefect" or t.startswith("prefect.") for t in imports_of(name, path)))
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
    assert "services.relay" in GRAPH["flows.cli"]            # imported inside the `relay` command


def _stage_tests(tree: ast.AST) -> list[int]:
    """Lines that compare something's `.stage` (`cfg.stage == "distill"`, `!=`, `in`)."""
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Compare)
            and any(isinstance(side, ast.Attribute) and side.attr == "stage" for side in (node.left, *node.comparators))]


def test_only_the_stages_package_tells_stages_apart():
    """What differs between stages lives in peftflow/stages/ (its Stage and Workflow); everything
    else asks the stage, never tests its name, so adding a stage is one package and one line."""
    offenders = [f"{name}:{line}" for name, path in MODULES.items() if not name.startswith("peftflow.stages")
                 for line in _stage_tests(ast.parse(path.read_text()))]
    assert not offenders, offenders
    assert _stage_tests(ast.parse('if cfg.stage == "distill": pass')) == [1]  # what the walk catches
    assert _stage_tests(ast.parse('if "dpo" != config.stage: pass')) == [1]
