"""One linter and formatter configuration (ruff, in pyproject.toml) for the package, the tests,
the benchmarks and the chapters' py:percent twins; the suite fails on any finding."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["src", "tests", "benchmarks", "notebooks"]


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args, *TARGETS], cwd=ROOT, capture_output=True, text=True)


def test_ruff_check_is_clean():
    out = ruff("check", "--no-cache", "--output-format", "concise")
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format_is_clean():
    out = ruff("format", "--no-cache", "--check")
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_sees_the_chapters():
    """Guard: the chapters' .py twins are linted (ruff skips .ipynb here: they are jupytext pairs)."""
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--show-files", *TARGETS],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    listed = out.stdout
    assert "notebooks/20_topline.py" in listed and "src/nnrandomness/train.py" in listed
    assert ".ipynb" not in listed
