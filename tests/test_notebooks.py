"""Guards around the chapters: nbval really compares them, and their .py twins agree with them.

`make test` runs ``pytest --nbval`` over notebooks/ in the same pytest invocation as tests/ (see
the Makefile): every code cell of every chapter is re-executed and its output compared with the
committed one, up to tests/nbval_sanitize.cfg and cells tagged ``nbval-ignore-output``. These
tests make sure that comparison is not empty.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from nnrandomness import book, charts

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks under notebooks/: the nbval run would test nothing"


def test_every_code_cell_has_a_stored_execution():
    """nbval silently skips the comparison of a cell stored with execution_count null: a
    notebook committed unexecuted would only be smoke-tested."""
    unexecuted = []
    for path in NOTEBOOKS:
        nb = nbformat.read(str(path), as_version=4)
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == "code" and cell.source.strip() and cell.execution_count is None:
                first = cell.source.strip().splitlines()[0][:60]
                unexecuted.append(f"{path.relative_to(ROOT)} cell {index}: {first!r}")
    assert not unexecuted, (
        "code cells stored without execution (nbval would not compare them); execute the chapter "
        "(python -m nnrandomness.book --only NAME) and commit its outputs:\n" + "\n".join(unexecuted)
    )


def test_charts_use_the_offline_renderer():
    """Every chart is a Vega-Lite MIME bundle that JupyterLab draws itself (plus an SVG for viewers
    without JavaScript): not Altair's CDN HTML (blank offline, random ids), not HTML calling the
    book's window.vegaEmbed (a note in Lab)."""
    offenders, found = [], 0
    for path in NOTEBOOKS:
        nb = nbformat.read(str(path), as_version=4)
        for index, cell in enumerate(nb.cells):
            for output in cell.get("outputs", []):
                data = output.get("data", {})
                html = "".join(data.get("text/html", "")) + "".join(
                    data.get("application/papermill.record/text/html", "")
                )
                if "altair-viz-" in html or "cdn.jsdelivr.net/npm/vega" in html or "vegaEmbed" in html:
                    offenders.append(f"{path.relative_to(ROOT)} cell {index}: chart as HTML")
                if charts.MIME_TYPE in data:
                    found += 1
                    if "image/svg+xml" not in data or not data.get("text/plain", "").startswith("<chart nnr-chart-"):
                        offenders.append(f"{path.relative_to(ROOT)} cell {index}: chart without SVG or name")
                if any(key.startswith("application/papermill.record/application/vnd.vegalite") for key in data):
                    offenders.append(f"{path.relative_to(ROOT)} cell {index}: chart glued with display=False")
    assert found, "no chart output in the chapters: this check would prove nothing"
    assert not offenders, (
        "charts not rendered by nnrandomness.charts (call charts.enable() in the chapter's imports cell, "
        "glue charts with display=True):\n" + "\n".join(offenders)
    )


GLUE_FIGURE = re.compile(r"^:::\{glue:figure\} (\S+)", re.M)
LAB_MAX_OUTPUTS = 50  # JupyterLab shows a cell's first 50 outputs (maxNumberOutputs); a glued value is one


def test_glued_figures_show_in_lab_and_once_in_the_book():
    """A glued figure is displayed by its cell (JupyterLab shows it there: it renders no glue
    directive), among the cell's first outputs, and the cell is tagged remove-output (the book
    shows it once, where the directive places it)."""
    problems, figures = [], 0
    for path in NOTEBOOKS:
        nb = nbformat.read(str(path), as_version=4)
        names = {n for c in nb.cells if c.cell_type == "markdown" for n in GLUE_FIGURE.findall(c.source)}
        figures += len(names)
        shown = {}
        for index, cell in enumerate(nb.cells):
            for position, output in enumerate(cell.get("outputs", [])):
                name = output.get("metadata", {}).get("scrapbook", {}).get("name")
                if name in names and not any(k.startswith("application/papermill.record/") for k in output["data"]):
                    shown[name] = (index, cell, position)
        for name in sorted(names):
            rel = path.relative_to(ROOT)
            if name not in shown:
                problems.append(f"{rel}: {name} is not glued with display=True")
                continue
            index, cell, position = shown[name]
            if "remove-output" not in cell.metadata.get("tags", []):
                problems.append(f"{rel} cell {index}: displays {name} but is not tagged remove-output")
            visible = [
                o for o in cell.outputs if not all(k.startswith("application/papermill") for k in o.get("data", {}))
            ]
            late = [o for o in visible if cell.outputs.index(o) >= LAB_MAX_OUTPUTS]
            if late:
                problems.append(f"{rel} cell {index}: output {position} ({name}) is beyond Lab's first 50")
    assert figures > 10, "the chapters' figures were not found: this check would prove nothing"
    assert not problems, "\n".join(problems)


def cell_sources(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_py_twin_in_sync(path):
    twin = path.with_suffix(".py")
    assert twin.is_file(), (
        f"{path.name} has no py:percent twin: run `jupytext --set-formats ipynb,py:percent {path.relative_to(ROOT)}`"
    )
    notebook, script = jupytext.read(path), jupytext.read(twin)
    assert "py:percent" in notebook.metadata.get("jupytext", {}).get("formats", ""), (
        f"{path.name} is not paired with py:percent in its metadata"
    )
    assert cell_sources(notebook) == cell_sources(script), (
        f"{path.name} and {twin.name} differ: run `jupytext --sync {path.relative_to(ROOT)}` "
        "(from the side you edited last)"
    )


def test_no_orphan_twins():
    twins = {p.with_suffix(".py") for p in NOTEBOOKS}
    orphans = [p.name for p in (ROOT / "notebooks").glob("*.py") if p not in twins]
    assert not orphans, f"py twins without a notebook: {orphans}"


def test_make_test_runs_kernels_like_the_book():
    """nbval's kernels must run with the environment the book's build step gives them (one
    thread, no progress bars), or the committed outputs would not be reproduced."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe, "the Makefile has no test recipe"
    missing = [f"{k}={v}" for k, v in book.KERNEL_ENV.items() if f"{k}={v}" not in recipe.group(1)]
    assert not missing, f"the Makefile's test recipe lacks {missing} (see nnrandomness.book.KERNEL_ENV)"
    assert "--nbval" in recipe.group(1) and "notebooks" in recipe.group(1)


# ----------------------------------------------------------------------------- nbval compares
def stored_notebook(code: str, output_text: str | None = None, html: str | None = None):
    """A one-cell notebook as if executed, with the given stored output."""
    cell = new_code_cell(code, execution_count=1)
    if html is not None:
        cell.outputs = [new_output("display_data", data={"text/html": html, "text/plain": "<HTML>"})]
    else:
        cell.outputs = [new_output("stream", name="stdout", text=output_text)]
    return new_notebook(
        cells=[cell], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    )


def run_nbval(tmp_path: Path, names: list[str], sanitize: bool) -> dict[str, str]:
    """Run pytest --nbval on notebooks in tmp_path, in a subprocess; {notebook: PASSED/FAILED}."""
    # --rootdir: the temporary folder, not this repository (whose pytest settings would apply).
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "--nbval",
        *names,
        "-rA",
        f"--rootdir={tmp_path}",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:xdist",
    ]
    if sanitize:
        shutil.copy(SANITIZE, tmp_path / SANITIZE.name)
        cmd.append(f"--nbval-sanitize-with={SANITIZE.name}")
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    outcome = {}
    for line in result.stdout.splitlines():
        match = re.match(r"^(PASSED|FAILED|ERROR) (\S+?)::", line)
        if match:
            outcome[match.group(2)] = match.group(1)
    assert set(outcome) == set(names), f"nbval did not report every notebook:\n{result.stdout[-3000:]}"
    return outcome


def test_nbval_compares_outputs(tmp_path):
    notebooks = {
        "right.ipynb": stored_notebook("print(1 + 1)", "2\n"),
        "wrong_text.ipynb": stored_notebook("print(1 + 1)", "3\n"),
        "wrong_html.ipynb": stored_notebook(
            "from IPython.display import HTML\nHTML('<div id=\"nnr-chart-1\"></div>')",
            html='<div id="nnr-chart-2"></div>',
        ),
        # What the sanitize file is for: a temporary path, an address, a duration.
        "varying.ipynb": stored_notebook(
            "import tempfile, time\nprint(tempfile.mkdtemp(), object())\nstart = time.perf_counter()\n"
            "print(f'took {time.perf_counter() - start + 1:.3f} s')",
            "/tmp/tmpab12cd <object object at 0x7f0000000000>\ntook 9.876 s\n",
        ),
    }
    for name, nb in notebooks.items():
        nbformat.write(nb, str(tmp_path / name))
    outcome = run_nbval(tmp_path, list(notebooks), sanitize=True)
    assert outcome == {
        "right.ipynb": "PASSED",
        "wrong_text.ipynb": "FAILED",
        "wrong_html.ipynb": "FAILED",
        "varying.ipynb": "PASSED",
    }
    # Without the sanitize file the varying outputs do differ: the patterns are what makes it pass.
    assert run_nbval(tmp_path, ["varying.ipynb"], sanitize=False) == {"varying.ipynb": "FAILED"}


def test_same_cpu_cells_are_compared_only_on_the_recording_cpu(tmp_path):
    """conftest.py: a cell tagged nbval-same-cpu is compared where the chapter was executed (its
    recorded float_machine) and only run elsewhere; untagged cells are compared everywhere."""
    from nnrandomness.environment import float_machine

    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")

    def wrong(machine: str, tagged: bool):
        nb = stored_notebook("print(1 + 1)", "3\n")
        nb.metadata["nnrandomness"] = {"executed_on": machine}
        if tagged:
            nb.cells[0].metadata["tags"] = ["nbval-same-cpu"]
        return nb

    notebooks = {
        "here_tagged.ipynb": wrong(float_machine(), tagged=True),
        "elsewhere_tagged.ipynb": wrong("Some Other CPU | AVX2 | torch 0.0", tagged=True),
        "elsewhere_untagged.ipynb": wrong("Some Other CPU | AVX2 | torch 0.0", tagged=False),
    }
    for name, nb in notebooks.items():
        nbformat.write(nb, str(tmp_path / name))
    assert run_nbval(tmp_path, list(notebooks), sanitize=False) == {
        "here_tagged.ipynb": "FAILED",
        "elsewhere_tagged.ipynb": "PASSED",
        "elsewhere_untagged.ipynb": "FAILED",
    }
    # A tagged cell that raises fails everywhere: it is run, only its output goes uncompared.
    raising = stored_notebook("raise RuntimeError('boom')", "")
    raising.metadata["nnrandomness"] = {"executed_on": "Some Other CPU"}
    raising.cells[0].metadata["tags"] = ["nbval-same-cpu"]
    nbformat.write(raising, str(tmp_path / "raising.ipynb"))
    assert run_nbval(tmp_path, ["raising.ipynb"], sanitize=False) == {"raising.ipynb": "FAILED"}


def test_chapters_with_same_cpu_cells_record_where_they_ran():
    """Without the record every tagged cell would go uncompared on every machine."""
    unrecorded = [
        p.name
        for p in NOTEBOOKS
        if any("nbval-same-cpu" in c.metadata.get("tags", []) for c in nbformat.read(str(p), 4).cells)
        and not nbformat.read(str(p), 4).metadata.get("nnrandomness", {}).get("executed_on")
    ]
    assert unrecorded == []
