#!/usr/bin/env python3
"""The house rules, checked over the code's own imports (function-level imports included).

1. No import cycle between modules.
2. ``spaces/`` and ``targets/`` import nothing of ``search/`` except ``search.core``.
3. At most 8 modules directly in ``search/``; the rest live in sub-packages named for their stage.

Imports under ``if TYPE_CHECKING:`` never run, so they are not counted. Usage:
``python .ci/house.py [ROOT]``; prints each violation on one line and exits 1 when there is any.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGES = ("search", "spaces", "targets")
LIBRARIES = ("spaces", "targets")
ALLOWED_FROM_LIBRARIES = "search.core"
MAX_TOP_MODULES = 8


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if _type_checking_only(node):
            stack.extend(node.orelse)  # type: ignore[attr-defined]
            continue
        stack.extend(ast.iter_child_nodes(node))


def _owner(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` names or lies in."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules that ``module`` imports, anywhere in its body."""
    out = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        out.update(o for n in names if (o := _owner(n, known)) is not None and o != module)
    return out


def graph(root: Path) -> dict[str, set[str]]:
    known = modules(root)
    return {m: imports(m, p, known) for m, p in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def violations(root: Path) -> list[str]:
    """Every broken rule, one line each."""
    edges = graph(root)
    out = [f"rule 1: import cycle: {' <-> '.join(c)}" for c in cycles(edges)]
    for module in sorted(edges):
        if module.split(".")[0] in LIBRARIES:
            for dep in sorted(edges[module]):
                if dep.split(".")[0] == "search" and not (
                    dep == ALLOWED_FROM_LIBRARIES or dep.startswith(ALLOWED_FROM_LIBRARIES + ".")
                ):
                    out.append(f"rule 2: {module} imports {dep} (libraries may import only search.core)")
    top = sorted(p.name for p in (root / "search").glob("*.py"))
    if len(top) > MAX_TOP_MODULES:
        listed = ", ".join(top)
        out.append(f"rule 3: {len(top)} modules directly in search/ (at most {MAX_TOP_MODULES}): {listed}")
    return out


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    found = violations(root)
    for line in found:
        print(line)
    if not found:
        print(f"house rules hold: {len(modules(root))} modules, no cycles, libraries import only search.core")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
