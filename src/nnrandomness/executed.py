"""Executed notebooks: read them, strip what records the run rather than its results, write them.

Three callers keep executed notebooks, and all go through here:

* the plan runner (`batch`): one papermill execution of the training notebook per job, kept under
  the plan's executed_root, failed ones too;
* the overhead runner (`overhead.run`): one papermill execution per hardware label;
* the book build (`book`): chapters executed in place by nbclient, with the notebook's own
  parameters.

What changes from one run to the next and says nothing about the results (papermill's and
nbclient's timestamps, durations and paths, papermill's random cell ids, widget state) is removed,
so that the same run gives the same file and a second build leaves ``git status`` clean. Files are
written as nbformat writes them (one-space indent, sorted keys, sources split into lines, a final
newline), atomically (a killed runner never leaves half a file), and only when their text changes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat

# Seconds a papermill runner waits for a notebook's kernel to answer (a loaded machine is slow).
START_TIMEOUT = 120
# What papermill records about the run in the notebook's and each cell's metadata.
PAPERMILL_RUN_KEYS = ("start_time", "end_time", "duration", "input_path", "output_path")  # notebook level
PAPERMILL_CELL_RUN_KEYS = ("start_time", "end_time", "duration")  # cell level
# Metadata that records when or how long a run took (or the live state of its widgets), never what it computed.
RUN_METADATA = ("widgets",)  # notebook level
CELL_RUN_METADATA = ("execution", "ExecuteTime")  # cell level: nbclient's iopub timestamps, JupyterLab's timer
# Cells papermill inserts with random ids: the injected parameters and the error banner.
PAPERMILL_TAGS = ("injected-parameters", "papermill-error-cell-tag")


def read(path: str | Path) -> dict | None:
    """The notebook at `path` as plain JSON, or None: absent, or cut short by a kill while it was saved."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _strip_metadata(meta: dict, run_keys: tuple, papermill_run_keys: tuple, parameters: bool) -> None:
    """Strip one metadata mapping (the notebook's or a cell's), see `strip`."""
    for key in run_keys:
        meta.pop(key, None)
    if not parameters:
        meta.pop("papermill", None)
    for key in papermill_run_keys:
        meta.get("papermill", {}).pop(key, None)


def strip(nb: dict, *, parameters: bool = True) -> dict:
    """Remove run-dependent metadata from `nb` (in place; returns it) and give papermill's cells stable ids.

    parameters: keep papermill's record of what the run was given (its parameters, version,
    exception flag and each cell's status), as an executed job must; False drops papermill's
    metadata altogether, as the book does for chapters that run with their own parameters.
    Everything the cells printed is kept.
    """
    _strip_metadata(nb.setdefault("metadata", {}), RUN_METADATA, PAPERMILL_RUN_KEYS, parameters)
    for cell in nb["cells"]:
        _strip_metadata(cell.get("metadata", {}), CELL_RUN_METADATA, PAPERMILL_CELL_RUN_KEYS, parameters)
    for tag in PAPERMILL_TAGS:
        tagged = [c for c in nb["cells"] if tag in c.get("metadata", {}).get("tags", [])]
        for i, cell in enumerate(tagged):
            cell["id"] = tag if i == 0 else f"{tag}-{i}"
    return nb


def dumps(nb: dict) -> str:
    """The text of `nb` as nbformat writes it (and Jupyter saves it), with its final newline.

    Works on papermill's plain JSON (sources as lists of lines) and on nbformat's nodes (sources
    as strings) alike: both give the same text.
    """
    text = nbformat.writes(nbformat.from_dict(nb), version=nbformat.NO_CONVERT)
    return text if text.endswith("\n") else text + "\n"


def write(nb: dict, target: str | Path) -> bool:
    """Write `nb` to `target` atomically, only if its text differs from the file's; whether it wrote."""
    target = Path(target)
    text = dumps(nb)
    try:
        if target.read_text(encoding="utf-8") == text:
            return False
    except OSError:  # absent (or unreadable): write it
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)
    return True


def keep(source: str | Path, target: str | Path) -> dict | None:
    """Strip the notebook papermill wrote at `source` and write it to `target`; the notebook, or
    None when there is none to keep (papermill never started, or was killed while saving)."""
    nb = read(source)
    if nb is not None:
        write(strip(nb), target)
    return nb
