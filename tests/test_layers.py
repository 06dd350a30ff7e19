"""The package's import graph: no cycle, and every import runs down the layers the README lists.

The README's layout table is the one written statement of the layers (a row per layer, the
modules in backticks); this test reads it, so the document and the code cannot drift apart.
Every import counts: module level, inside functions (imported on use) and under TYPE_CHECKING.
A module may import modules of lower layers; on the ground floor (layer 0) modules may also
import each other (constants), but never in a cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "nnrandomness"
# Entry points, not concerns: the public surface re-exports from everything, `python -m` calls cli.
FACADES = {"__init__", "__main__"}


def module_of(path: Path) -> str:
    """A module's node in the graph: the file's stem, or the subpackage's name for its files."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_modules(path: Path) -> set[str]:
    """Names of the package's modules that `path` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(), str(path))
    inside_subpackage = len(path.relative_to(PACKAGE).parts) > 1
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            # level 1 is this folder: the package itself, or a subpackage (its own siblings);
            # level 2 from a subpackage is the package.
            to_package = (node.level == 1 and not inside_subpackage) or (node.level == 2 and inside_subpackage)
            if node.level == 0 and node.module and node.module.split(".")[0] == "nnrandomness":
                parts = node.module.split(".")[1:]
            elif to_package:
                parts = node.module.split(".") if node.module else []
            else:  # a sibling inside the same subpackage, or a third-party import
                continue
            if parts:
                found.add(parts[0])
            else:  # `from . import a, b`
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "nnrandomness" and len(parts) > 1:
                    found.add(parts[1])
    return found


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        node = module_of(path)
        if node in FACADES:
            continue
        graph.setdefault(node, set()).update(imported_modules(path) - {node} - FACADES)
    return graph


def readme_layers() -> dict[str, int]:
    """module -> layer, from the README rows `| <layer> | `mod`, `mod` | ... |`."""
    layers = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if m:
            for name in re.findall(r"`([a-z_]+)(?:/|\.py)?`", m.group(2)):
                layers[name] = int(m.group(1))
    return layers


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path [a, b, ..., a], or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_is_read():
    """Guard: the reader finds imports that exist (a reader that finds nothing passes everything)."""
    graph = import_graph()
    assert "metrics" in graph["analysis"] and "store" in graph["analysis"]
    assert {"noise", "data", "models"} <= graph["train"]


def test_the_readme_lists_every_module_on_a_layer():
    layers, graph = readme_layers(), import_graph()
    assert layers, "the README's layout table lists no layers"
    assert sorted(set(graph) - set(layers)) == [], "modules missing from the README's layer table"
    assert sorted(set(layers) - set(graph)) == [], "the README's layer table names modules that do not exist"


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_imports_run_down_the_layers():
    layers = readme_layers()
    against = [
        f"{module} (layer {layers[module]}) imports {target} (layer {layers[target]})"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if module in layers
        and target in layers
        and not (layers[target] < layers[module] or layers[target] == layers[module] == 0)
    ]
    assert against == [], "imports against the README's layers:\n" + "\n".join(against)


@pytest.mark.parametrize(
    "graph, cycle",
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ],
)
def test_find_cycle_on_hand_made_graphs(graph, cycle):
    assert find_cycle(graph) == cycle
