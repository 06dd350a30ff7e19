"""Notebook regression tests (nbval) on machines that round differently.

Chapters that train live (01_noise_sources, 10_training, 30_determinism_cost) print numbers whose
last bits depend on the CPU: the same seeds and thread count train to different weights on an AMD
EPYC and an Intel Xeon (both AVX512; see environment.float_machine). Their cells that show such
numbers are tagged ``nbval-same-cpu``; the book records where a chapter was executed
(``metadata.nnrandomness.executed_on``). On that machine kind nbval compares those cells exactly;
elsewhere it still runs them (an error fails the test) but does not compare their outputs, and
says so in the test summary. Every other cell is compared everywhere.
"""

from __future__ import annotations

TAG = "nbval-same-cpu"


def recorded_machine(notebook) -> str | None:
    return notebook.metadata.get("nnrandomness", {}).get("executed_on")


def same_cpu_cells(notebook) -> list[int]:
    """Indices (among code cells, as nbval numbers them) of the cells tagged TAG."""
    code = [c for c in notebook.cells if c.cell_type == "code"]
    return [i for i, c in enumerate(code) if TAG in c.metadata.get("tags", [])]


def pytest_collection_modifyitems(config, items):
    cells = [item for item in items if type(item).__name__ == "IPyNbCell"]
    if not cells:
        return
    from nnrandomness.environment import float_machine

    here = float_machine()
    for item in cells:
        if TAG in item.cell.metadata.get("tags", []) and recorded_machine(item.parent.nb) != here:
            item.options["check"] = False  # nbval: run the cell, compare nothing


def pytest_terminal_summary(terminalreporter, config):
    """Say which cells ran uncompared (read from the notebooks: under xdist, workers collect)."""
    if not config.getoption("nbval", default=False):
        return
    import nbformat

    from nnrandomness.environment import float_machine

    here, lines = float_machine(), []
    asked = [(config.invocation_params.dir / a.split("::")[0]).resolve() for a in config.args]
    for path in sorted((config.rootpath / "notebooks").glob("*.ipynb")):
        if not any(a == path or a in path.parents for a in asked):
            continue  # not part of this run
        nb = nbformat.read(path, as_version=4)
        if (cells := same_cpu_cells(nb)) and recorded_machine(nb) != here:
            lines.append(f"{path.name}: cells {cells} (recorded on {recorded_machine(nb)!r})")
    if lines:
        terminalreporter.section(f"{TAG}: ran, outputs not compared on this CPU ({here!r})")
        for line in lines:
            terminalreporter.write_line(line)
