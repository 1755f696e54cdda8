"""symgrad's imports point downward: the module import graph, read from the source with ast, has no
cycle.  Every import statement counts, those inside functions too (a lazy import only hides a
cycle until the first call)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "symgrad"


def modules(root: Path) -> dict:
    """dotted module name -> (path, is a package's __init__)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if package else parts)] = (path, package)
    return out


def _targets(name: str, package: bool, node, known: dict) -> list:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:  # relative: from the module's package, one level up per extra dot
        base = name.split(".") if package else name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    # ``from package import module`` imports that module; ``from module import name`` the module
    return [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]


def import_graph(root: Path = ROOT) -> dict:
    """module -> the package's modules it imports (anywhere in its source)."""
    known = modules(root)
    graph = {m: set() for m in known}
    for name, (path, package) in known.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(name, package, node, known):
                while target not in known and "." in target:  # symgrad.x.name -> symgrad.x
                    target = target.rsplit(".", 1)[0]
                if target in known and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict) -> list | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict = {}
    path: list = []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50 and graph["symgrad.check"], "the import graph was not read"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_public_driver_is_on_top():
    """Nothing below ``symgrad.check`` imports it back (the module driver used to)."""
    graph = import_graph()
    for below in ("symgrad.nn.check", "symgrad.elementwise", "symgrad.graph.check", "symgrad.inputs"):
        assert "symgrad.check" not in graph[below], below


@pytest.mark.parametrize("source, cycle", [
    ({"a.py": "from . import b\n", "b.py": "def f():\n    from .a import x\n"}, True),  # a lazy import counts
    ({"a.py": "from .b import f\n", "b.py": "import math\n"}, False),
    ({"a.py": "import pkg.b\n", "b.py": "import pkg.c\n", "c.py": "from pkg import a\n"}, True),
])
def test_the_cycle_finder_sees_cycles(tmp_path, source, cycle):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name, text in source.items():
        (pkg / name).write_text(text)
    assert (find_cycle(import_graph(pkg)) is not None) == cycle
