"""The house rules of the code base, checked: imports flow one way through the layers, nothing
imports in a cycle, and modules and functions stay short enough to read (or say why not).

Every ``import`` counts, also the ones inside functions: a lazy import hides a dependency from a
reader, not from this test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "harness"

# Bottom to top. A module may import from its own layer and the layers below it, never above.
LAYERS: list[tuple[str, ...]] = [
    (  # foundations: no harness imports beyond this layer
        "harness",
        "harness.errors",
        "harness.secrets",
        "harness.files",
        "harness.progress",
        "harness.palette",
        "harness.metrics",
        "harness.callbacks",
        "harness.plugins",
        "harness.config",
    ),
    ("harness.data",),
    ("harness.models",),
    ("harness.optim", "harness.faults"),
    ("harness.checks", "harness.sanity"),
    ("harness.tracking",),
    ("harness.fit",),
    ("harness.sweep", "harness.eda", "harness.predict"),
    ("harness.report",),
    ("harness.bench",),
    ("harness.cli", "harness.__main__"),
]
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("harness"):
                found.add(node.module)
                # ``from harness.data import masks`` imports the submodule harness.data.masks
                found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("harness"))
    return found


def _layer(module: str) -> int:
    best, depth = -1, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            matches = module == name or module.startswith(name + ".")
            if matches and name.count(".") > depth and not (name == "harness" and module != name):
                best, depth = i, name.count(".")
    return best


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}


def test_every_module_has_a_layer():
    unplaced = [m for m in _modules() if _layer(m) < 0]
    assert not unplaced, f"add these modules to LAYERS: {unplaced}"


def test_no_module_imports_from_a_layer_above_it():
    upward = [
        f"{m} (layer {_layer(m)}) imports {i} (layer {_layer(i)})"
        for m, deps in _graph().items()
        for i in sorted(deps)
        if _layer(i) > _layer(m)
    ]
    assert not upward, "\n".join(upward)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first walk (each reported once, from its first module)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)
    return found


def test_no_import_cycles():
    # a package's __init__ counts as a module: a submodule importing its own package, whose
    # __init__ imports that submodule, is a cycle too
    cycles = _cycles(_graph())
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_layer_lookup_prefers_the_longest_name():
    assert _layer("harness") == 0
    assert _layer("harness.config.sweep") == 0
    assert _layer("harness.sweep.view") > _layer("harness.fit.fit") > _layer("harness.checks.audit")
    assert _layer("harness.cli") == len(LAYERS) - 1


def _reason(lines: list[str], lineno: int) -> bool:
    """A ``# long: <why>`` comment in the comment block right above the def (``lineno`` is the
    def's 1-based line) or on the def's first lines."""
    i = lineno - 2
    while i >= 0 and lines[i].strip().startswith(("#", "@")):
        if "# long:" in lines[i]:
            return True
        i -= 1
    return any("# long:" in line for line in lines[lineno - 1 : lineno + 2])


@pytest.mark.parametrize("module", sorted(_modules()))
def test_modules_and_functions_are_short_or_say_why(module):
    path = _modules()[module]
    text = path.read_text()
    lines = text.splitlines()
    if len(lines) > MAX_MODULE_LINES:
        assert "# size:" in text, (
            f"{path}: {len(lines)} lines > {MAX_MODULE_LINES}: split it, or say why not in a "
            "'# size: <reason>' comment"
        )
    long = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            n = (node.end_lineno or node.lineno) - node.lineno + 1
            if n > MAX_FUNCTION_LINES and not _reason(lines, node.lineno):
                long.append(f"{node.name} ({n} lines)")
    assert not long, f"{path}: split these, or say why not with '# long: <reason>': {long}"
