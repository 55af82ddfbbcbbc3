"""No module imports one that imports it back, and the library never imports the applications.

Read from the source with ``ast`` (nothing is imported): every ``import`` and ``from … import`` counts, at the top
of a module or inside a function, except those under ``if TYPE_CHECKING:``, which never run. Importing a module runs
its parent packages' ``__init__`` first; that implicit edge is not counted, only the modules an import names.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"  # the installed packages live under src/ (a clone's root never shadows them)
PACKAGES = ("tips", "tips_pipelines", "tips_eval")
Graph = dict[str, dict[str, int]]  # module → {imported module: line of the first such import}


def module_files(packages: tuple[str, ...] = PACKAGES) -> dict[str, tuple[Path, bool]]:
    """Dotted module name → (file, is a package ``__init__``)."""
    out = {}
    for package in packages:
        for path in sorted((SRC / package).rglob("*.py")):
            parts = list(path.relative_to(SRC).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Import nodes of a module, skipping ``if TYPE_CHECKING:`` bodies (their ``else`` still counts)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _imports(node)


def import_graph(modules: dict[str, tuple[Path, bool]]) -> Graph:
    """Edges between the given modules; ``from pkg import name`` points at ``pkg.name`` when that is a module."""

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: Graph = {}
    for name, (path, is_package) in modules.items():
        edges: dict[str, int] = {}
        here = name.split(".") if is_package else name.split(".")[:-1]
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in filter(None, map(known, targets)):
                if target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def _describe(graph: Graph, component: list[str]) -> str:
    return "; ".join(f"{v} → {w} (line {graph[v][w]})" for v in component for w in graph[v] if w in component)


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph(module_files())
    found = cycles(graph)
    assert not found, "import cycles: " + " | ".join(_describe(graph, c) for c in found)


def test_the_library_never_imports_the_applications():
    graph = import_graph(module_files())
    reaches = {(v, w, line) for v, edges in graph.items() if v.split(".")[0] == "tips"
               for w, line in edges.items() if w.split(".")[0] != "tips"}
    assert not reaches, f"tips/ imports tips_eval/ or tips_pipelines/: {sorted(reaches)}"


def test_the_cycle_finder_sees_a_cycle_through_a_package_init_and_ignores_type_checking_imports(tmp_path):
    graph = {"a": {"a.b": 1}, "a.b": {"a": 3}, "c": {"d": 1}, "d": {}}
    assert cycles(graph) == [["a", "a.b"]]
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\nelse:\n    import y\ndef f():\n    import z\n"
    names = [a.name for node in _imports(ast.parse(source)) for a in node.names]
    assert names == ["TYPE_CHECKING", "y", "z"]
