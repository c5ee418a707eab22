"""The front ends import one way: no module of lipcheck.loaders reaches itself again
through its lipcheck imports (module-level or inside functions)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lipcheck"


def _module(path: Path) -> str:
    name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _imports(path: Path, known: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found & known


def _graph() -> dict[str, set[str]]:
    paths = {_module(p): p for p in PACKAGE.rglob("*.py")}
    return {m: _imports(p, set(paths)) - {m} for m, p in paths.items()}


def _reaches(graph: dict[str, set[str]], start: str) -> bool:
    seen, todo = set(), list(graph[start])
    while todo:
        m = todo.pop()
        if m == start:
            return True
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    return False


def test_no_loader_module_is_in_an_import_cycle() -> None:
    graph = _graph()
    loaders = [m for m in graph if m.startswith("lipcheck.loaders.")]
    assert len(loaders) > 10
    assert [m for m in loaders if _reaches(graph, m)] == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _reaches({"a": {"b"}, "b": {"a"}}, "a") and not _reaches({"a": {"b"}, "b": set()}, "a")
