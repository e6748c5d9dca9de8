#!/usr/bin/env python3
"""Print the package's module dependency graph: layers in import order, and any cycle.

Reads the code's own imports (module level and function-local ones, ``TYPE_CHECKING``
blocks included) with ``ast``; nothing is imported or executed. Exits 1 when a cycle
exists, so CI can run it. Usage: ``scripts/import_graph.py [--modules]``.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "daemon"
PACKAGE = "batchscope"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """What a module imports; ``from pkg import sub`` counts as importing ``pkg.sub``
    only (the package's ``__init__`` runs first, but that is Python's, not our, edge)."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for a in node.names:
                full = f"{prefix}.{a.name}"
                found.add(full if full in modules else prefix)
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


def group(module: str) -> str:
    """The architectural unit: the subpackage, or the top-level module."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def build() -> tuple[dict[str, set[str]], set[str]]:
    modules = {module_name(p): p for p in (ROOT / PACKAGE).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for imported in imports_of(path, name, set(modules)):
            # "from pkg import name" names a module or an attribute: keep what exists.
            while imported not in modules and "." in imported:
                imported = imported.rsplit(".", 1)[0]
            if imported in modules and imported != name:
                deps.add(imported)
        graph[name] = deps
    return graph, set(modules)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; components of more than one node are cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layers(graph: dict[str, set[str]]) -> list[list[str]]:
    """Nodes by depth: layer 0 imports nothing of the package, layer n only lower ones."""
    depth: dict[str, int] = {}

    def d(v: str, seen: frozenset[str] = frozenset()) -> int:
        if v in depth:
            return depth[v]
        if v in seen:
            return 0  # a cycle: reported separately
        depth[v] = 1 + max((d(w, seen | {v}) for w in graph[v]), default=-1)
        return depth[v]

    for v in graph:
        d(v)
    by_layer: dict[int, list[str]] = defaultdict(list)
    for v, n in depth.items():
        by_layer[n].append(v)
    return [sorted(by_layer[n]) for n in sorted(by_layer)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", action="store_true",
                        help="show every module, not only the subpackages")
    args = parser.parse_args()
    graph, _ = build()
    module_cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    shown = graph
    if not args.modules:
        shown = defaultdict(set)
        for v, deps in graph.items():
            shown[group(v)].update(group(w) for w in deps if group(w) != group(v))
        shown = dict(shown)
    print(f"{PACKAGE}: {len(graph)} modules")
    for n, layer in enumerate(layers(shown)):
        print(f"layer {n}:")
        for v in layer:
            deps = ", ".join(sorted(shown[v])) or "-"
            print(f"  {v:32} -> {deps}")
    group_cycles = [c for c in strongly_connected(shown) if len(c) > 1]
    for c in module_cycles:
        print("module cycle: " + " -> ".join(c))
    for c in group_cycles:
        print("package cycle: " + " -> ".join(c))
    if not module_cycles and not group_cycles:
        print("no import cycle")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
