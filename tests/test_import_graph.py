"""The modules of lipcheck import each other one way: no import circle.

Which imports count: every `import` and `from ... import` statement anywhere in a module,
at module level, inside functions, and under `if TYPE_CHECKING:`. A function-local import
only defers the circle to the first call (and hides it from readers); a type-only import
is still a dependency of the module's meaning; neither is a way out of a layering error.
Edges go to the module named (`from lipcheck.gate import checks` is an edge to
`lipcheck.gate.checks`; `from lipcheck.gate.checks import Check` to `lipcheck.gate.checks`);
the parent packages Python also initialises are not counted, and neither are imports by
name at run time (importlib: only the loader of user-supplied --arch files uses it).
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lipcheck"

# No circle is allowed: an entry here needs a reason and an issue to remove it.
ALLOWED: set[frozenset[str]] = set()


def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the package."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _targets(node: ast.AST, package: str) -> list[str]:
    """Dotted names an import statement refers to: modules, or names inside modules."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: strip level - 1 packages from the importing module's package
        kept = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(kept + ([base] if base else []))
    return [f"{base}.{alias.name}" for alias in node.names]


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The lipcheck modules one file imports (any statement, anywhere in the file)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        for target in _targets(node, package):
            while target and target not in modules:  # a name inside a module, or not ours
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(package: Path) -> dict[str, set[str]]:
    modules = module_files(package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = {stack.pop()}
            while v not in component:
                component.add(stack.pop())
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _describe(component: frozenset[str], graph: dict[str, set[str]]) -> str:
    edges = [f"{a} -> {b}" for a in sorted(component) for b in sorted(graph[a] & component)]
    return "; ".join(edges)


def test_lipcheck_has_no_import_circle() -> None:
    graph = import_graph(PACKAGE)
    found = set(cycles(graph))
    new = [_describe(c, graph) for c in found - ALLOWED]
    assert not new, "import circle(s): " + " | ".join(new)
    gone = [sorted(c) for c in ALLOWED - found]
    assert not gone, f"no longer a circle, delete from ALLOWED: {gone}"


def test_the_walk_finds_local_type_only_and_relative_circles(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "import pkg.b\n",
        "b.py": "def f():\n    from pkg.a import x\n",
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.d import D\n",
        "d.py": "from pkg import c\n",
        "sub/__init__.py": "from .e import y\n",
        "sub/e.py": "from .. import sub\n",
        "g.py": "import pkg.h\nimport os\n",
        "h.py": "from pkg.sub import e\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(pkg)
    assert graph["pkg.g"] == {"pkg.h"} and graph["pkg.h"] == {"pkg.sub.e"}
    assert set(cycles(graph)) == {frozenset({"pkg.a", "pkg.b"}), frozenset({"pkg.c", "pkg.d"}),
                                  frozenset({"pkg.sub", "pkg.sub.e"})}
