"""framebag's modules import one way: no cycles, and nothing of the writer on the workers.

The graph is read from the source with :mod:`ast`, not from ``sys.modules``, so
that it is the same whatever a test imported before. An edge is an import that
runs:

- *eager*: at module level (also inside a module-level ``if`` or ``try``), run when
  the module is loaded;
- *lazy*: inside a function, run when the function is called (``Workflow.run``
  importing the engine, the CLI importing a subcommand).

Both kinds count for cycles: a lazy import that points back is still an import
that points back, for a reader and for the next refactoring. Imports under
``if TYPE_CHECKING:`` never run; they are listed as type-only and are not edges.

Run with ``pytest -s tests/test_imports.py`` to print the graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "framebag"

#: modules loaded on the workers: reading a frame, calling the functions, folding (and the
#: package itself, which Python loads before any of them: it exports the engine's run lazily)
WORKER_SIDE = ("__init__", "tasks", "reading", "hdf5", "keys", "workflow", "folds", "partitions")
#: the output writer, which only the driver may load
WRITER = ("output",)


def _modules(package: Path) -> dict[str, Path]:
    """Module name (relative to the package, ``__init__`` for the package) -> file."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).with_suffix("")
        out[".".join(rel.parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(node: ast.Import | ast.ImportFrom, module: str, known: set[str]) -> list[str]:
    """The framebag modules an import statement in ``module`` loads."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
        return [n.split(".", 1)[1] if "." in n else "__init__"
                for n in names if n == "framebag" or n.startswith("framebag.")]
    if node.level:
        here = module.split(".")[:-1]  # the package this module is in
        base = here[: len(here) - (node.level - 1)]
        if node.module:
            base = base + node.module.split(".")
    elif node.module == "framebag" or (node.module or "").startswith("framebag."):
        base = node.module.split(".")[1:]
    else:
        return []
    stem = ".".join(base)
    out = []
    for alias in node.names:  # `from . import hdf5` loads a submodule, not just the package
        sub = f"{stem}.{alias.name}" if stem else alias.name
        out.append(sub if sub in known else (stem or "__init__"))
    return out


def _visit(node: ast.AST, kind: str, module: str, known: set[str],
           edges: dict[str, set[str]]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            edges[kind].update(t for t in _targets(child, module, known) if t != module)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                _visit(ast.Module(body=[stmt], type_ignores=[]), "type", module, known, edges)
            for stmt in child.orelse:
                _visit(ast.Module(body=[stmt], type_ignores=[]), kind, module, known, edges)
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            _visit(child, "lazy", module, known, edges)
        else:
            _visit(child, kind, module, known, edges)


def import_graph(package: Path = PACKAGE) -> dict[str, dict[str, set[str]]]:
    """``{module: {"eager": {...}, "lazy": {...}, "type": {...}}}`` over framebag's modules."""
    mods = _modules(package)
    graph: dict[str, dict[str, set[str]]] = {}
    for name, path in mods.items():
        edges: dict[str, set[str]] = {"eager": set(), "lazy": set(), "type": set()}
        _visit(ast.parse(path.read_text(), str(path)), "eager", name, set(mods), edges)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, set[str]]], kinds: tuple[str, ...]) -> list[list[str]]:
    """Every elementary cycle's first occurrence found by depth-first search (as paths)."""
    edges = {m: set().union(*(e[k] for k in kinds)) for m, e in graph.items()}
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()

    def dfs(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt in path:
                loop = path[path.index(nxt):] + [nxt]
                key = frozenset(loop)
                if key not in seen:
                    seen.add(key)
                    found.append(loop)
            elif len(path) < len(edges):
                dfs(nxt, path + [nxt])

    for start in sorted(edges):
        dfs(start, [start])
    return found


def reachable(graph: dict[str, dict[str, set[str]]], start: str, kinds: tuple[str, ...]
              ) -> dict[str, list[str]]:
    """Modules ``start`` loads through ``kinds`` of edges, each with one path to it."""
    paths = {start: [start]}
    todo = [start]
    while todo:
        m = todo.pop()
        for k in kinds:
            for n in sorted(graph[m][k]):
                if n not in paths:
                    paths[n] = paths[m] + [n]
                    todo.append(n)
    return paths


def format_graph(graph: dict[str, dict[str, set[str]]]) -> str:
    lines = []
    for m in sorted(graph):
        e = graph[m]
        parts = [", ".join(sorted(e["eager"])) or "-"]
        if e["lazy"]:
            parts.append("lazy: " + ", ".join(sorted(e["lazy"])))
        if e["type"]:
            parts.append("type-only: " + ", ".join(sorted(e["type"])))
        lines.append(f"  {m:12} -> " + " | ".join(parts))
    return "\n".join(lines)


GRAPH = import_graph()


def test_the_graph_is_read() -> None:
    """The parser sees the imports it must see (else the checks below prove nothing)."""
    assert {"engine", "workflow", "output", "reading", "__init__", "cli"} <= set(GRAPH)
    assert "output" in GRAPH["engine"]["eager"]
    assert "hdf5" in GRAPH["reading"]["eager"]  # `from . import hdf5`
    assert "workflow" in GRAPH["__init__"]["eager"]
    print("\nframebag import graph (module -> what it imports):\n" + format_graph(GRAPH))


def test_parser_finds_a_cycle(tmp_path: Path) -> None:
    """The checks can fail: a lazy back-import and a package-level one are both found."""
    pkg = tmp_path / "framebag"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .a import x\n")
    (pkg / "a.py").write_text("from . import b\nx = 1\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import T\n"
        "def f():\n    from .a import x\n    return x\n")
    (pkg / "c.py").write_text("from framebag import x\n")
    g = import_graph(pkg)
    assert g["b"] == {"eager": set(), "lazy": {"a"}, "type": {"c"}}
    assert g["c"]["eager"] == {"__init__"}
    assert cycles(g, ("eager",)) == []
    assert cycles(g, ("eager", "lazy")) == [["a", "b", "a"]]


def test_no_import_cycles() -> None:
    found = cycles(GRAPH, ("eager", "lazy"))
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_nothing_imports_the_package_init() -> None:
    """Modules import what they use from its module, never from ``framebag`` itself
    (whose ``__init__`` imports the public API, and so nearly everything)."""
    users = [m for m, e in GRAPH.items() if "__init__" in e["eager"] | e["lazy"]]
    assert users == []


@pytest.mark.parametrize("module", WORKER_SIDE)
def test_worker_side_does_not_load_the_writer(module: str) -> None:
    """Loading a worker-side module loads nothing of the output writer, and none of
    its functions imports the writer itself. (``Workflow.run`` imports the engine,
    which writes; it is called on the driver only.)"""
    eager = reachable(GRAPH, module, ("eager",))
    bad = {w: eager[w] for w in WRITER if w in eager}
    assert not bad, f"{module} loads the writer: " + "; ".join(
        " -> ".join(p) for p in bad.values())
    assert not set(WRITER) & GRAPH[module]["lazy"]


def test_no_function_is_longer_than_50_lines():
    """Issue 11: every function of framebag, docstring included, fits in 50 lines."""
    long = []
    for name, path in _modules(PACKAGE).items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 50:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, long
