"""The package structure that docs/architecture.md describes, checked on every run.

- No import cycle between modules of training, service and worker, direct (a imports b, b
  imports a) or through others (a -> b -> c -> a). A cycle means two modules are one topic
  split in two, or one of them holds something both need; either way the import order
  becomes a source of bugs. Imports inside functions and under TYPE_CHECKING count: they
  are the same dependency, only deferred.
- No module over MAX_LINES lines: a module that size holds several topics (STYLE.md keeps
  them near 100-400).

The graph comes from grimp, the parser behind `lint-imports`, so the two read the same
imports. The cycle search is written here (Tarjan's strongly connected components), and each
failure names the modules of one cycle in import order.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("training", "service", "worker")
MAX_LINES = 500


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of PACKAGES it imports directly (itself excluded)."""
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    return {
        m: {t for t in graph.find_modules_directly_imported_by(m) if t != m}
        for m in sorted(graph.modules)
    }


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of `graph` with more than one module (Tarjan,
    iterative: the graph is deep enough to matter for Python's recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module, staying inside the component:
    [a, b, ..., a]."""
    members, start = set(component), component[0]
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node] & members):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [start, *reversed(path[:-1]), start] if node != start else [start, start]
            if child not in came_from:
                came_from[child] = node
                queue.append(child)
    raise AssertionError(f"{component}: not strongly connected")


def module_lines() -> dict[str, int]:
    """Every .py file of PACKAGES (relative path) -> its number of lines."""
    return {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


# -- the checks ---------------------------------------------------------------------------------


def test_no_import_cycles() -> None:
    graph = import_graph()
    cycles = [one_cycle(graph, c) for c in strongly_connected(graph)]
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_over_the_line_limit() -> None:
    long = {path: n for path, n in module_lines().items() if n > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines:\n" + "\n".join(
        f"{path}: {n} lines" for path, n in sorted(long.items())
    )


# -- the checks check: known graphs and files -----------------------------------------------------


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": set()}, []),
        ({"a": {"b"}, "b": {"a"}}, [["a", "b", "a"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c", "a"]]),
        # two cycles sharing nothing, and a diamond (no cycle) beside them
        (
            {
                "a": {"b"},
                "b": {"a"},
                "c": {"d"},
                "d": {"e"},
                "e": {"c"},
                "f": {"g", "h"},
                "g": {"i"},
                "h": {"i"},
                "i": set(),
            },
            [["a", "b", "a"], ["c", "d", "e", "c"]],
        ),
    ],
)
def test_cycle_search_on_known_graphs(
    graph: dict[str, set[str]], expected: list[list[str]]
) -> None:
    found = sorted(one_cycle(graph, c) for c in strongly_connected(graph))
    assert found == expected


def test_cycle_search_through_a_long_chain() -> None:
    n = 5000  # deeper than Python's recursion limit
    graph = {f"m{i}": {f"m{i + 1}"} for i in range(n)} | {f"m{n}": {"m0"}}
    (component,) = strongly_connected(graph)
    assert len(component) == n + 1
    cycle = one_cycle(graph, component)
    assert len(cycle) == n + 2 and cycle[0] == cycle[-1]
