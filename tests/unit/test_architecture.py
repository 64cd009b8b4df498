"""The house's plan: no circle of imports among trialflow's and the workers' modules.

A circle means two rooms that cannot be understood, tested or changed one without the other, and
it only works as long as the import that closes it stays inside a function. So every ``import``
and ``from ... import`` counts, at module level or inside a function or an ``if TYPE_CHECKING``.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("trialflow", "workers")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def our_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The module ``import name`` runs last: ``name`` itself, or the closest package above it that is ours."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Our modules that ``module`` imports, anywhere in its text."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(filter(None, (_known(alias.name, modules) for alias in node.names)))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                # ``from trialflow.services import outbox`` imports the module trialflow.services.outbox.
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in modules else _known(source, modules))
    found.discard(None)
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = our_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def tangles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that all reach one another (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per tangle, as a path back to where it starts."""
    return [_cycle_within(graph, set(group)) for group in tangles(graph)]


def _cycle_within(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, staying inside the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    return paths[node] + [start]
                if nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{sorted(group)} is not strongly connected")


def test_imports_in_functions_relative_ones_and_modules_taken_from_a_package_are_edges(tmp_path):
    names = ("pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c", "pkg.sub.d")
    modules = {name: tmp_path.joinpath(*name.split(".")) / "__init__.py" if name in ("pkg", "pkg.sub")
               else tmp_path.joinpath(*name.split(".")).with_suffix(".py") for name in names}
    for path in modules.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    modules["pkg.sub.c"].write_text("import os\nfrom . import d\n\n\ndef f():\n    from .. import a\n"
                                    "    from ..b import thing\n    import pkg.sub.missing\n")
    assert imports_of("pkg.sub.c", modules["pkg.sub.c"], modules) == {"pkg.sub.d", "pkg.a", "pkg.b", "pkg.sub"}


def test_a_cycle_is_reported_as_a_path_back_to_where_it_starts():
    graph = {"a": {"b"}, "b": {"c", "d"}, "c": {"a"}, "d": set(), "e": {"a"}}
    assert tangles(graph) == [["a", "b", "c"]]
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_is_read_from_our_modules():
    graph = import_graph()
    assert "trialflow.api.slack" in graph["trialflow.api.app"]
    assert "trialflow.services.outbox" in graph["trialflow.delivery.core"]  # from trialflow.services import outbox


def test_no_module_imports_itself_back_through_others():
    graph = import_graph()
    found = [(group, _cycle_within(graph, set(group))) for group in tangles(graph)]
    assert not found, "import cycles:\n" + "\n".join(
        f"  {' -> '.join(cycle)}" + (f"  (the circle takes in {', '.join(group)})" if len(group) > len(cycle) - 1 else "")
        for group, cycle in found)
