#!/usr/bin/env python3
"""Checks the import rules of issue 11 on the source tree: exit 0 when both hold.

Rule 1 (no hidden imports): every import of a `gpumux` module is a statement at module
level (the module body, or an `if`/`try` block directly in it, `if TYPE_CHECKING:`
included); none sits inside a function or a class.
Rule 2 (no cycles): the graph with an edge A → B for each module-level import of B by A
(`from pkg import name` also counts `pkg.name` when that is a module; `TYPE_CHECKING`
imports count too) has no cycle between gpumux modules.

Owns: this check only; tests/unit/test_architecture.py is where it is enforced.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "gpumux"
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def discover() -> dict[str, tuple[Path, bool]]:
    found: dict[str, tuple[Path, bool]] = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


Import = ast.Import | ast.ImportFrom


def targets(node: Import, name: str, is_package: bool, known: set[str]) -> list[str]:
    """The dotted names `node` imports, relative imports resolved like Python does."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        parts = name.split(".")[: None if is_package else -1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join([*parts, *([node.module] if node.module else [])])
    else:
        base = node.module or ""
    return [base, *(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known)]


def ours(target: str) -> bool:
    return target == PACKAGE or target.startswith(PACKAGE + ".")


def walk(tree: ast.Module) -> tuple[list[Import], list[Import]]:
    """(module-level imports, imports nested in a function or class)."""
    top: list[Import] = []
    nested: list[Import] = []

    def visit(node: ast.AST, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (nested if inside else top).append(child)
            scoped = isinstance(child, SCOPES)
            visit(child, inside or scoped)

    visit(tree, False)
    return top, nested


def main() -> int:
    modules = discover()
    known = set(modules)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    problems: list[str] = []
    for name, (path, is_package) in modules.items():
        top, nested = walk(ast.parse(path.read_text(encoding="utf-8")))
        for node in nested:
            hits = [t for t in targets(node, name, is_package, known) if ours(t)]
            if hits:
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                problems.append(f"{where}: import inside a function or class: {', '.join(hits)}")
        for node in top:
            found = targets(node, name, is_package, known)
            graph[name].update(t for t in found if t in known and t != name)
    problems += [f"cycle among: {', '.join(c)}" for c in cycles(graph)]
    edges = sum(map(len, graph.values()))
    report = [
        *problems,
        f"{len(modules)} modules, {edges} import edges, {len(problems)} problem(s)",
    ]
    sys.stdout.write("\n".join(report) + "\n")
    return 1 if problems else 0


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


if __name__ == "__main__":
    sys.exit(main())
