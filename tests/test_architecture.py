"""docs/architecture.md's rules, read off the code's own imports (every ``import``, at module level
or inside a function): no cycles, no module past 400 lines, and each package importing only what
its layer may."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400


def _modules(folder: Path, package: str | None) -> dict[str, Path]:
    """Module name → file: ``icsnn_onnx.x.y`` under a package, bare names (``_common``) for
    the benchmarks, which import each other by file name."""
    found = {}
    for path in sorted(folder.rglob("*.py") if package else folder.glob("*.py")):
        parts = list(path.relative_to(folder).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join([package, *parts] if package else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that ``name`` imports (``from pkg import sub`` is ``pkg.sub``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parts, *([base] if base else [])])
            subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
            targets = subs if len(subs) == len(node.names) else [*subs, base]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph(folder: Path, package: str | None) -> dict[str, set[str]]:
    modules = _modules(folder, package)
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


PACKAGE = _graph(ROOT / "icsnn_onnx", "icsnn_onnx")


@pytest.mark.parametrize(
    "graph", [PACKAGE, _graph(ROOT / "benchmarks", None)], ids=["icsnn_onnx", "benchmarks"]
)
def test_no_import_cycles(graph):
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_past_400_lines():
    long = {
        str(path.relative_to(ROOT)): n
        for path in (ROOT / "icsnn_onnx").rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def _under(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


COMPILER = ("icsnn_onnx.passes", "icsnn_onnx.calibration", "icsnn_onnx.converter", "icsnn_onnx.tuning")

# What each layer may not reach, directly or through anything it imports.
FORBIDDEN = {
    "icsnn_onnx.neurons": (*COMPILER, "icsnn_onnx.runtime", "icsnn_onnx.analysis", "icsnn_onnx.data"),
    "icsnn_onnx.data": (*COMPILER, "icsnn_onnx.runtime", "icsnn_onnx.analysis", "icsnn_onnx.neurons"),
    "icsnn_onnx.ops": ("icsnn_onnx",),  # numpy semantics of ONNX ops: nothing of the project
    "icsnn_onnx.runtime": (*COMPILER, "icsnn_onnx.analysis", "icsnn_onnx.export"),
    "icsnn_onnx.analysis": (*COMPILER, "icsnn_onnx.export"),
    "icsnn_onnx.export": (*COMPILER, "icsnn_onnx.analysis"),
}


def _violations(graph: dict[str, set[str]], layer: str, forbidden: tuple[str, ...]) -> set[str]:
    return {
        f"{module} → {reached}"
        for module in graph
        if _under(module, (layer,))
        for reached in _reaches(graph, module)
        if _under(reached, forbidden) and not _under(reached, (layer,))
    }


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_each_layer_imports_only_what_it_may(layer):
    assert _violations(PACKAGE, layer, FORBIDDEN[layer]) == set()


def test_a_layer_reaching_a_forbidden_one_through_another_is_found():
    graph = {"p.runtime.a": {"p.shared"}, "p.shared": {"p.passes.b"}, "p.passes.b": set()}
    assert _violations(graph, "p.runtime", ("p.passes",)) == {"p.runtime.a → p.passes.b"}


def test_nothing_imports_the_cli():
    importers = {
        module
        for module, deps in PACKAGE.items()
        if any(_under(d, ("icsnn_onnx.cli",)) for d in deps)
        and not _under(module, ("icsnn_onnx.cli", "icsnn_onnx.__main__"))
    }
    assert importers == set()
