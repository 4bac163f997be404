"""The house rules of the package, as tests: no import circles, rooms import only downwards,
trading and storage know neither asyncio nor HTTP, and no module outgrows 400 lines.

Every import counts: at module level, inside a function, and under ``if TYPE_CHECKING:``
(a circle hidden in a function is still a circle). The rooms are those of
docs/architecture.md; change the table below and that page together.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = "tradingd"
PACKAGE_DIR = REPO / "daemon" / PACKAGE
MAX_LINES = 400
BELOW = ("*below*",)  # may import every room of a lower layer


@dataclass(frozen=True)
class Room:
    name: str
    layer: int  # 1 is the top
    modules: tuple[str, ...]  # under tradingd; a package stands for everything in it; "__init__" is tradingd itself
    may_import: tuple[str, ...]  # rooms besides its own: BELOW, or an explicit list of lower rooms


ROOMS = (
    #    room          layer  modules                                                  may also import
    Room("cli",        1, ("cli", "__main__"),                                          BELOW),
    Room("supervisor", 2, ("supervisor",),                                              BELOW),
    Room("edge",       3, ("api", "api_input", "prometheus", "notify", "health", "auth", "logs"),    BELOW),
    Room("workflows",  4, ("workflows",),                                               BELOW),
    Room("reports",    5, ("reports",),                                                 ("trading", "storage", "base")),
    Room("memory",     5, ("memory",),                                                  ("storage", "base")),
    Room("trading",    6, ("trading",),                                                 ()),
    Room("storage",    6, ("storage",),                                                 ()),
    Room("base",       7, ("__init__", "config", "stats", "periodic", "formatting", "tasks"), ()),
)  # fmt: skip
# Rooms that know neither the event loop nor the network: they are called from threads and processes.
NO_ASYNCIO_OR_HTTP = {"trading", "storage"}
ASYNCIO_OR_HTTP = ("asyncio", "aiohttp", "http", "urllib.request", "socket")


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    kind: str  # "top-level", "in a function" or "type-only"

    def __str__(self) -> str:
        return f"{self.source}:{self.line} -> {self.target} ({self.kind})"


@functools.cache
def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _statements(node: ast.AST, kind: str = "top-level") -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import statement under ``node`` with where it sits: top-level, in a function, type-only."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node, kind
        return
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and kind == "top-level":
        kind = "in a function"
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        for statement in node.body:
            yield from _statements(statement, "type-only")
        for statement in node.orelse:
            yield from _statements(statement, kind)
        return
    for child in ast.iter_child_nodes(node):
        yield from _statements(child, kind)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _known(name: str) -> str | None:
    """The module ``name`` refers to: itself, or the longest enclosing module we have."""
    while name:
        if name in modules():
            return name
        name = name.rpartition(".")[0]
    return None


def imported_names(source: str, path: Path) -> Iterator[tuple[str, int, str]]:
    """(full dotted name, line, kind) of everything ``source`` imports, relative imports resolved."""
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    for node, kind in _statements(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, kind
            continue
        base = node.module or ""
        if node.level:
            parts = package.split(".")
            anchor = ".".join(parts[: len(parts) - node.level + 1])
            base = f"{anchor}.{base}" if base else anchor
        for alias in node.names:
            # `from pkg import sub` imports the module pkg.sub when there is one, else a name of pkg.
            candidate = f"{base}.{alias.name}"
            yield (candidate if candidate in modules() else base), node.lineno, kind


@functools.cache
def imports() -> tuple[Import, ...]:
    """Every edge between two modules of the package (the first statement for each pair)."""
    edges: dict[tuple[str, str], Import] = {}
    for source, path in modules().items():
        for name, line, kind in imported_names(source, path):
            target = _known(name)
            if target is not None and target != source and (source, target) not in edges:
                edges[source, target] = Import(source, target, line, kind)
    return tuple(edges.values())


def room_of(module: str) -> Room | None:
    relative = "__init__" if module == PACKAGE else module.removeprefix(f"{PACKAGE}.")
    for room in ROOMS:
        if any(relative == m or relative.startswith(f"{m}.") for m in room.modules):
            return room
    return None


def allowed_rooms(room: Room) -> set[str]:
    if room.may_import == BELOW:
        return {other.name for other in ROOMS if other.layer > room.layer} | {room.name}
    return {*room.may_import, room.name}


def test_the_room_table_points_only_down() -> None:
    names = {room.name for room in ROOMS}
    for room in ROOMS:
        for other in ROOMS:
            if other.name in room.may_import:
                assert other.layer > room.layer, f"{room.name} may import {other.name}, which is not below it"
        assert set(room.may_import) <= names | set(BELOW), f"{room.name}: unknown rooms in {room.may_import}"


def _circles() -> list[tuple[set[str], list[Import]]]:
    """Each group of modules that import each other in a circle (Tarjan), with one shortest circle (BFS)."""
    graph: dict[str, dict[str, Import]] = {}
    for edge in imports():
        graph.setdefault(edge.source, {})[edge.target] = edge
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(modules()):
        if node not in index:
            connect(node)

    circles = []
    for group in groups:
        start = min(group)
        paths: dict[str, list[Import]] = {start: []}
        frontier = [start]
        circle: list[Import] | None = None
        while frontier and circle is None:
            following = []
            for node in frontier:
                for nxt, edge in sorted(graph.get(node, {}).items()):
                    if nxt == start:
                        circle = [*paths[node], edge]
                        break
                    if nxt in group and nxt not in paths:
                        paths[nxt] = [*paths[node], edge]
                        following.append(nxt)
                if circle is not None:
                    break
            frontier = following
        assert circle is not None
        circles.append((group, circle))
    return sorted(circles, key=lambda found: found[1][0].source)


def test_no_import_circles() -> None:
    found = _circles()
    lines = []
    for group, circle in found:
        lines.append(" -> ".join([circle[0].source, *(f"{e.target} (line {e.line} of {e.source}, {e.kind})"
                                                      for e in circle)]))
        if len(group) > len(circle):
            lines.append(f"    (one of the circles among {', '.join(sorted(group))})")
    if found:
        pytest.fail(f"{len(found)} import circle(s), function-level and type-only imports included:\n  "
                    + "\n  ".join(lines), pytrace=False)


def test_imports_follow_the_room_rules() -> None:
    problems = []
    for module in sorted(modules()):
        if room_of(module) is None:
            problems.append(f"{module} is in no room: add it to ROOMS (and to docs/architecture.md)")
    for edge in sorted(imports(), key=lambda e: (e.source, e.line)):
        source, target = room_of(edge.source), room_of(edge.target)
        if source is None or target is None:
            continue  # said above
        allowed = allowed_rooms(source)
        if target.name not in allowed:
            rule = (
                "a room imports only its own and lower layers"
                if source.may_import == BELOW
                else f"{source.name} may import only {', '.join(sorted(allowed))}"
            )
            problems.append(f"{edge}: {source.name} (layer {source.layer}) -> {target.name} "
                            f"(layer {target.layer}): {rule}")
    if problems:
        pytest.fail(f"{len(problems)} room rule violation(s):\n  " + "\n  ".join(problems), pytrace=False)


def test_trading_and_storage_know_neither_asyncio_nor_http() -> None:
    problems = []
    for module, path in sorted(modules().items()):
        room = room_of(module)
        if room is None or room.name not in NO_ASYNCIO_OR_HTTP:
            continue
        for name, line, kind in imported_names(module, path):
            if any(name == banned or name.startswith(f"{banned}.") for banned in ASYNCIO_OR_HTTP):
                problems.append(f"{module}:{line} imports {name} ({kind}): {room.name} knows no asyncio or HTTP")
    if problems:
        pytest.fail(f"{len(problems)} import(s) of asyncio or HTTP:\n  " + "\n  ".join(problems), pytrace=False)


def test_every_module_is_at_most_400_lines() -> None:
    sizes = {module: len(path.read_text(encoding="utf-8").splitlines()) for module, path in modules().items()}
    over = [f"{module}: {lines} lines" for module, lines in sorted(sizes.items()) if lines > MAX_LINES]
    if over:
        pytest.fail(f"{len(over)} module(s) over {MAX_LINES} lines (one concern per module):\n  " + "\n  ".join(over),
                    pytrace=False)


def test_the_graph_sees_function_level_and_type_only_imports(tmp_path: Path) -> None:
    """The parser itself: an import in a function or under TYPE_CHECKING counts, relative ones resolve."""
    path = tmp_path / "probe.py"
    path.write_text(
        "from typing import TYPE_CHECKING\n"
        "from tradingd import config\n"
        "if TYPE_CHECKING:\n"
        "    from .. import stats\n"
        "class Probe:\n"
        "    def later(self) -> None:\n"
        "        from .atomic import atomic_write_bytes\n"
    )
    assert list(imported_names("tradingd.storage.probe", path)) == [
        ("typing", 1, "top-level"),
        ("tradingd.config", 2, "top-level"),
        ("tradingd.stats", 4, "type-only"),
        ("tradingd.storage.atomic", 7, "in a function"),
    ]
