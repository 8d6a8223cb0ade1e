"""The package's shape as a contract: no import cycles inside fedloom, and none of the forbidden dependencies
(DESIGN.md): the round loop imports interfaces only; algorithms know no engine, runtime or config parsing;
crypto and codecs know no algorithm; models and data know no loop. Every import counts, function-level ones
included (a lazy import that only hides a cycle is still a cycle); imports under ``TYPE_CHECKING`` do not."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "fedloom"

FORBIDDEN = {  # package -> packages (or modules) it must never import
    "core": ("algorithms", "codecs", "crypto", "data", "models", "engine", "robust", "privacy", "system", "rl", "gan",
             "distributed", "simulation", "build", "config", "cli"),
    "algorithms": ("engine", "cli", "config", "simulation", "build"),
    "crypto": ("algorithms",),
    "codecs": ("algorithms",),
    "models": ("core", "simulation", "build"),
    "data": ("core", "simulation", "build"),
}


def _modules() -> dict[str, Path]:
    mods = {}
    for f in ROOT.rglob("*.py"):
        rel = f.relative_to(ROOT.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        mods[".".join(parts)] = f
    return mods


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    return skip


def _imports(mod: str, path: Path, mods: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = mod.split(".")
            if node.level:
                base = base[: len(base) - node.level + (1 if path.name == "__init__.py" else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            while n and n not in mods:  # `import fedloom.a.b` depends on module fedloom.a.b (or its package)
                n = n.rpartition(".")[0]
            if n and n != mod and not mod.startswith(n + "."):  # a submodule importing its own package is fine
                out.add(n)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, mods) for m, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read(graph):
    assert "fedloom.core.loop" in graph["fedloom.simulation"] or "fedloom.core.loop" in graph["fedloom.build"] or \
        any("fedloom.core" in t for t in graph["fedloom.simulation"])
    assert "fedloom.core.types" in graph["fedloom.core.loop"]


def test_no_import_cycles(graph):
    assert _cycles(graph) == []


def test_cycle_detector_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_forbidden_dependencies(graph):
    bad = []
    for mod, targets in graph.items():
        part = mod.split(".")[1] if mod.count(".") else ""
        for t in targets:
            tpart = t.split(".")[1] if t.count(".") else ""
            if tpart in FORBIDDEN.get(part, ()):
                bad.append(f"{mod} -> {t}")
    assert bad == []


def test_core_loop_imports_interfaces_only(graph):
    loop = graph["fedloom.core.loop"]
    assert all(t.startswith("fedloom.core") or t in ("fedloom.wire", "fedloom.metrics.evaluation") for t in loop), loop
