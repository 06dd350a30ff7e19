"""The public surface: every `__all__` is accurate, and the chapters use only what it lists."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import re
from pathlib import Path

import pytest

import nnrandomness

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(
    m.name for m in pkgutil.walk_packages(nnrandomness.__path__, "nnrandomness.") if not m.name.endswith("__main__")
)
# Modules with a declared surface (the others are reached as `module.name` by the package itself).
SURFACED = [name for name in MODULES if "__all__" in Path(importlib.util.find_spec(name).origin).read_text()] + [
    "nnrandomness"
]
CHAPTERS = sorted((ROOT / "notebooks").glob("*.py"))


def defined_names(module) -> set[str]:
    """Public names a module defines or imports at its top level (read from its source)."""
    tree = ast.parse(Path(module.__file__).read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


@pytest.mark.parametrize("name", SURFACED)
def test_all_lists_only_names_that_exist(name):
    module = importlib.import_module(name)
    listed = module.__all__
    assert len(listed) == len(set(listed)), f"{name}.__all__ lists a name twice"
    missing = [n for n in listed if not hasattr(module, n)]
    assert missing == [], f"{name}.__all__ lists names the module does not have"
    assert set(listed) <= defined_names(module) | {m.split(".")[-1] for m in MODULES}


def attribute_uses(alias: str) -> dict[str, set[str]]:
    """chapter -> names X used as `<alias>.X` in its code (py:percent twins, comments dropped)."""
    uses = {}
    for path in CHAPTERS:
        code = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        uses[path.name] = set(re.findall(rf"(?<![\w.]){re.escape(alias)}\.([A-Za-z_]\w*)", code))
    return uses


def test_the_uses_reader_finds_uses():
    """Guard: the chapters do use `nr.` names, so the next test compares something."""
    assert set().union(*attribute_uses("nr").values()) >= {"load_runs"}


def test_chapters_use_only_the_public_surface():
    """A chapter reaching for `nr.X` gets a name `nnrandomness.__all__` promises (or a module)."""
    public = set(nnrandomness.__all__) | {m.split(".")[1] for m in MODULES}
    outside = {chapter: sorted(names - public) for chapter, names in attribute_uses("nr").items() if names - public}
    assert outside == {}, "chapters use names outside nnrandomness.__all__"


@pytest.mark.parametrize("name", [n for n in SURFACED if n != "nnrandomness"])
def test_chapters_use_only_listed_names_of_a_module(name):
    module = name.split(".")[-1]
    listed = set(importlib.import_module(name).__all__)
    outside = {c: sorted(n - listed) for c, n in attribute_uses(module).items() if n - listed}
    assert outside == {}, f"chapters use names outside {name}.__all__"
