"""The overhead store: one folder per hardware label, complete only once its manifest is written.

Layout: ``<root>/overhead/<hardware>/`` holding ``results.parquet`` (one row per model x
configuration, `timing.ROW_COLUMNS`) and ``manifest.json`` (hardware, models, configuration
descriptions, plan, environment fingerprint, and the SHA-256 of the Parquet file). As in the run
store (`nnrandomness.store`), the manifest is written last by atomic rename and a folder without
one, or whose file fails its checksum, is never read as a result.

`DEFAULT_ROOT` is where `nnrandomness overhead` writes and the cost chapter reads, so that a sweep
run with the defaults is the one the book shows.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from .. import environment, store
from ..files import write_atomic
from .sweeps import Plan
from .timing import ADDED_COLUMNS, CONFIGURATIONS

# The overhead store's root, relative to the repository root: sweeps land in data/overhead/<hardware>/
# beside the run store (data/<hardware>/...), never inside it.
DEFAULT_ROOT = "data"
RESULTS, MANIFEST = "results.parquet", store.MANIFEST


def store_root(root: str | Path = "", *, repository: str | Path = ".") -> Path:
    """`root`, or when it is empty the default store `DEFAULT_ROOT` of the repository at `repository`
    (the chapters run in notebooks/, so they pass ".."; the CLI runs from the repository root)."""
    return Path(root) if str(root) else Path(repository) / DEFAULT_ROOT


def results_dir(root: str | Path, hardware: str) -> Path:
    return Path(root) / "overhead" / hardware


def write_results(
    frame: pd.DataFrame, root: str | Path, *, plan: Plan | None = None, env: dict | None = None
) -> list[Path]:
    """Write each hardware label's rows to `<root>/overhead/<hardware>/`; the manifest goes last.

    An existing result for the same hardware is replaced; until the new manifest lands the
    directory reads as incomplete.
    """
    out = []
    for hardware, rows in frame.groupby("hardware", sort=True):
        d = results_dir(root, hardware)
        d.mkdir(parents=True, exist_ok=True)
        (d / MANIFEST).unlink(missing_ok=True)
        rows.reset_index(drop=True).to_parquet(d / RESULTS, index=False)
        manifest = {
            "hardware": hardware,
            "rows": len(rows),
            "models": sorted(rows["model"].unique()),
            "configurations": {n: CONFIGURATIONS[n].description for n in rows["configuration"].unique()},
            "plan": dataclasses.asdict(plan) if plan is not None else None,
            "environment": env if env is not None else environment.fingerprint(rows["device"].iloc[0]),
            "files": {RESULTS: store.sha256_file(d / RESULTS)},
        }
        text = json.dumps(manifest, indent=1, sort_keys=True, default=str)
        write_atomic(d / MANIFEST, text.encode(), kept=f"{d / RESULTS} (no manifest: reads as incomplete)")
        out.append(d)
    return out


def read_results(root: str | Path, hardware: str) -> tuple[pd.DataFrame, dict]:
    """(rows, manifest) of one hardware label; ValueError when incomplete or damaged."""
    d = results_dir(root, hardware)
    if not (d / MANIFEST).exists():
        raise ValueError(f"{d}: no manifest (missing or interrupted overhead run)")
    try:
        manifest = json.loads((d / MANIFEST).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{d / MANIFEST}: unreadable manifest: {e}") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not isinstance(files.get(RESULTS), str):
        raise ValueError(f"{d / MANIFEST}: malformed manifest (no checksum of {RESULTS})")
    if not (d / RESULTS).is_file():
        raise ValueError(f"{d / RESULTS} is missing")
    if store.sha256_file(d / RESULTS) != files[RESULTS]:
        raise ValueError(f"{d / RESULTS} fails its SHA-256 checksum")
    rows = pd.read_parquet(d / RESULTS)
    # A sweep written before a column was added lacks it: None there (older sweeps stay readable).
    for column in ADDED_COLUMNS:
        if column not in rows:
            rows[column] = None
    return rows, manifest


def hardware_labels(root: str | Path) -> list[str]:
    """The hardware labels with a manifest under `root`, sorted (interrupted sweeps have none)."""
    return sorted(p.parent.name for p in (Path(root) / "overhead").glob(f"*/{MANIFEST}"))


def read_all(root: str | Path) -> dict[str, pd.DataFrame]:
    """Every complete sweep under `root`: hardware label -> its rows, in label order."""
    return {label: read_results(root, label)[0].assign(hardware=label) for label in hardware_labels(root)}
