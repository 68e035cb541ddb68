"""The import graph of core/, daemon/ and bench/: no cycles, and imports flow one way.

Every import counts, including those inside functions and under ``TYPE_CHECKING``: a cycle
hidden behind a lazy import is still two modules that cannot be read apart (docs/internals.md,
"Where things live"). ``from package import name`` is an edge to ``package.name`` when that is
a module, else to ``package``; a package's ``__init__`` is a module like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "daemon", "bench")
# Who may import whom: core knows nothing of the daemon or the benches; nothing imports tests.
FORBIDDEN = {"core": {"daemon", "bench", "tests"}, "daemon": {"bench", "tests"}, "bench": {"tests"}}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the three packages, by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            found[module_name(path, root)] = path
    return found


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules ``name`` imports anywhere in its source (absolute or relative)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in known else base)
    edges = set()
    for target in targets:
        # `import core.a.b` names core.a.b; a name inside a module resolves to the module.
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            edges.add(target)
    return edges


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    found = modules(root)
    known = set(found)
    return {name: imported(name, path, known) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    """The checker itself: a cycle hidden behind a function-level import and one behind
    TYPE_CHECKING are both found, relative imports resolve, and a clean tree has none."""
    pkg = tmp_path / "core"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from core.b import g\n    return g\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n"
    )
    (pkg / "c.py").write_text("from core import a\n")
    edges = {
        name: imported(name, path, set(modules(tmp_path)))
        for name, path in modules(tmp_path).items()
    }
    assert edges["core.c"] == {"core.a"}
    assert cycles(edges) == [["core.a", "core.b"]]
    (pkg / "b.py").write_text("g = 1\n")
    edges = {
        name: imported(name, path, set(modules(tmp_path)))
        for name, path in modules(tmp_path).items()
    }
    assert cycles(edges) == []


def test_no_import_cycles() -> None:
    found = cycles(graph())
    assert found == [], "import cycles (lazy and TYPE_CHECKING imports included): " + "; ".join(
        " <-> ".join(component) for component in found
    )


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_flow_one_way(package: str) -> None:
    """core <- daemon <- bench, and nothing imports tests."""
    bad = sorted(
        f"{name} -> {target}"
        for name, targets in graph().items()
        if name.split(".")[0] == package
        for target in targets
        if target.split(".")[0] in FORBIDDEN[package]
    )
    assert bad == []


def test_no_module_reaches_into_tests_by_path() -> None:
    """No bench or daemon module edits sys.path to import the tests' helpers."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in modules().values()
        if "sys.path.insert" in path.read_text() or "sys.path.append" in path.read_text()
    ]
    assert offenders == []
