"""The import graph of ``src/vaeood`` has no cycle, counting imports inside functions and
under ``if TYPE_CHECKING`` too (an import that dodges a cycle at load time still ties two
modules into one); nor has that of the benchmark scripts."""

from __future__ import annotations

import ast
from pathlib import Path

import vaeood

ROOT = Path(vaeood.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = ["vaeood", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The vaeood modules that ``path`` imports (a name imported from a package counts as
    its submodule when one of that name exists)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: _imports(path, set(files)) for name, path in files.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_checker_finds_a_cycle_it_is_shown():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_relative_and_local_imports():
    graph = _graph()
    assert "vaeood.inference.gaussian" in graph["vaeood.inference.estimators"]  # from .gaussian import ...
    assert "vaeood.experiments.fig2" in graph["vaeood.experiments"]  # from . import fig2


def test_vaeood_has_no_import_cycle():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_every_function_in_src_reads_at_a_glance():
    """No function of the package, signature and docstring included, is over 60 lines:
    long explanations belong in module docstrings, long code in named parts."""
    long = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} "
                            f"({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


#: the layers of the package, lowest first: a module may import its own layer and those
#: below it, never one above (docs/architecture.md draws them)
LAYERS = ("infra", "data", "inference", "models", "training", "features", "detectors", "evaluation", "decisions",
          "experiments", "top")
#: modules directly under ``vaeood`` and the layer each belongs to
TOP_LEVEL = {"vaeood._version": "infra", "vaeood._reproducible": "infra",
             "vaeood": "top", "vaeood._moved": "top", "vaeood.cli": "top",
             "vaeood.cli_parsers": "top",
             "vaeood.byo": "top", "vaeood.pipeline": "top", "vaeood.__main__": "top",
             "vaeood.image_detector": "top", "vaeood.image_arrays": "top"}


def _layer(module: str) -> str:
    if module in TOP_LEVEL:
        return TOP_LEVEL[module]
    layer = module.split(".")[1]
    assert layer in LAYERS, f"{module} is in no layer: put it in one of {LAYERS} (tests/test_imports.py)"
    return layer


def _upward(graph: dict[str, set[str]]) -> list[str]:
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    return sorted(f"{a} ({_layer(a)}) imports {b} ({_layer(b)})" for a, deps in graph.items() for b in deps
                  if rank[_layer(b)] > rank[_layer(a)])


def test_the_layer_checker_fails_an_upward_import():
    assert _upward({"vaeood.infra.atomic": {"vaeood.evaluation.metrics"}}) == [
        "vaeood.infra.atomic (infra) imports vaeood.evaluation.metrics (evaluation)"]
    assert _upward({"vaeood.evaluation.metrics": {"vaeood.infra.atomic"}, "vaeood.cli": {"vaeood.decisions"}}) == []


def test_no_module_imports_a_layer_above_its_own():
    assert not _upward(_graph())


def test_nothing_inside_vaeood_imports_a_moved_name():
    from vaeood._moved import MOVED
    old = {f"vaeood.{m}" for m in MOVED}
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    stale = sorted(f"{name} imports {m}" for name, path in files.items()
                   for m in _imports(path, set(files) | old) & old)
    assert not stale, stale


def test_every_module_in_src_is_under_400_lines():
    long = [f"{p.relative_to(ROOT)} ({n} lines)" for p in sorted(ROOT.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > 400]
    assert not long, long


def test_the_benchmark_scripts_have_no_import_cycle():
    """``benchmarks/`` imports its own scripts by their bare names (``import common``)."""
    scripts = {p.stem: p for p in (ROOT.parents[1] / "benchmarks").glob("*.py")}
    graph = {}
    for name, path in scripts.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found.add(node.module.split(".")[0])
        graph[name] = {m for m in found if m in scripts and m != name}
    assert "common" in graph and graph["flops"] >= {"common"}  # the checker sees the scripts' imports
    assert _find_cycle(graph) is None
