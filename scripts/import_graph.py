#!/usr/bin/env python3
"""Print what imports what in src/cryophile, by layer, and every import cycle.

Usage: ``python3 scripts/import_graph.py [--modules] [SRC]`` (SRC defaults to
this checkout's ``src``). Reads ``import`` statements only (nothing is
imported, so it runs without the project's dependencies).

What counts as an import: every ``import``/``from … import`` of a
``cryophile`` module, at module level or inside a function (marked ``*``,
deferred: it runs on first use, but it is a dependency all the same, and a
cycle hidden behind one is still a cycle). Imports under ``if TYPE_CHECKING:``
are left out: they never run. ``from cryophile.x import y`` is an import of
``cryophile.x.y`` when that is a module, else of ``cryophile.x``. A call
``importlib.import_module("cryophile.x")`` is a deferred import too, and one
of an f-string ``f"cryophile.x.{name}"`` an import of every module directly in
``cryophile.x`` (as cli/main.py imports the command it runs).

Output, in this order:

* the edges between units, one line per unit, grouped by layer (top to
  bottom, as DESIGN.md §7 lays them out): a unit is a top-level package
  (``cli``, ``daemons``, ``pipeline``, ``vault``) or a top-level module;
  with ``--modules``, every module is its own unit;
* the edges that go up a layer (a unit importing from a layer above its own);
* the import cycles between units, and between modules (the second finds a
  cycle inside a package, which the first cannot see).

Exit status: 0, whatever it finds (it reports; it does not judge).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "cryophile"

#: Layers, top to bottom (DESIGN.md §7; pipeline/backup.py is a use case inside
#: the pipeline package). A unit not named here is in the fourth layer.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("cli", frozenset({"cli", "__main__"})),
    ("use cases", frozenset({"restoring", "prune", "inventory", "verification", "abandoned",
                             "metrics", "chains", "chain_restore", "backup_choice",
                             "cancel", "leftovers", "keygen"})),
    ("daemons", frozenset({"daemons"})),
    ("pipeline / vault / spool / names, records and reads", frozenset()),
    ("leaves", frozenset({"config", "errors", "durable", "units", "watch", "backoff",
                          "storage_classes", "destination", "services", "spool_budget"})),
)
#: The index in LAYERS of the layer for units it does not name.
DEFAULT_LAYER = 3


def modules(source: Path) -> dict[str, Path]:
    """Every module under ``source/cryophile``, by dotted name."""
    found = {}
    for path in sorted((source / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(source).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST,
             deferred: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Import statements that run, each with whether it sits inside a function."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking_only(node):
            yield from ((n, deferred) for body in (node.orelse,) for n in body
                        if isinstance(n, ast.Import | ast.ImportFrom))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, deferred
            continue
        inner = deferred or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield from _imports(node, inner)


def _dynamic_imports(tree: ast.AST, known: dict[str, Path]) -> Iterator[str]:
    """What ``importlib.import_module`` calls in ``tree`` may import (see the docstring)."""
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and node.args and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id == "import_module"))):
            continue
        argument = node.args[0]
        if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
            yield argument.value
        elif (isinstance(argument, ast.JoinedStr) and argument.values
              and isinstance(argument.values[0], ast.Constant)
              and isinstance(argument.values[0].value, str)):
            prefix = argument.values[0].value
            package, dot, rest = prefix.rpartition(".")
            if dot and not rest:
                yield from (name for name in known if name.rpartition(".")[0] == package)


def edges(source: Path) -> dict[str, dict[str, bool]]:
    """module -> {imported module: True when every import of it is deferred}."""
    known = modules(source)
    graph: dict[str, dict[str, bool]] = {name: {} for name in known}
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        for target in _dynamic_imports(tree, known):
            if target in known and target != name:
                graph[name].setdefault(target, True)
        for node, deferred in _imports(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = name.split(".")
                    anchor = anchor if is_package else anchor[:-1]
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in known else base)
            for target in targets:
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if not target or target == name or not target.startswith(PACKAGE):
                    continue
                graph[name][target] = graph[name].get(target, True) and deferred
    return graph


def unit_of(module: str, by_module: bool) -> str:
    """The unit a module belongs to: itself with --modules, else its top-level name."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return ".".join(parts[1:]) if by_module else parts[1]


def layer_of(unit: str) -> int:
    """The index of ``unit``'s layer in LAYERS (top is 0)."""
    top = unit.split(".", maxsplit=1)[0]
    for index, (_, members) in enumerate(LAYERS):
        if top in members:
            return index
    return DEFAULT_LAYER


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def collapse(graph: dict[str, dict[str, bool]], by_module: bool) -> dict[str, dict[str, bool]]:
    """The graph between units; an edge is deferred only if all its imports are."""
    units: dict[str, dict[str, bool]] = {}
    for module, targets in graph.items():
        source = unit_of(module, by_module)
        units.setdefault(source, {})
        for target, deferred in targets.items():
            unit = unit_of(target, by_module)
            if unit != source:
                units[source][unit] = units[source].get(unit, True) and deferred
    return units


def main() -> int:
    """Print the report (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", action="store_true", help="one unit per module")
    parser.add_argument("source", nargs="?", type=Path,
                        default=Path(__file__).resolve().parent.parent / "src")
    args = parser.parse_args()
    graph = edges(args.source)
    units = collapse(graph, args.modules)

    def shown(targets: dict[str, bool]) -> str:
        return ", ".join(f"{t}*" if deferred else t for t, deferred in
                         sorted(targets.items(), key=lambda item: (layer_of(item[0]), item[0])))

    print("# edges (unit -> what it imports; * = only inside functions)")
    for number, (title, _) in enumerate(LAYERS):
        members = sorted(u for u in units if layer_of(u) == number)
        if members:
            print(f"## {title}")
            for unit in members:
                print(f"{unit} -> {shown(units[unit]) or '(nothing)'}")
    upward = [(unit, target) for unit, targets in sorted(units.items())
              for target in sorted(targets) if layer_of(target) < layer_of(unit)]
    print("# upward edges (into a layer above)")
    print("\n".join(f"{unit} -> {target}" for unit, target in upward) or "none")
    for title, level in (("units", units), ("modules", collapse(graph, by_module=True))):
        print(f"# cycles between {title}")
        found = cycles({unit: set(targets) for unit, targets in level.items()})
        print("\n".join(" <-> ".join(cycle) for cycle in found) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
