"""One cell of the study: the replicas of one setting, trained and written to the run store.

A cell is hardware x dataset x model x setting. `run_cell` joins the two floors below it:
`train` (which knows nothing of the store) trains a replica, `store` writes it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from . import data as data_mod
from . import store
from .train import ReplicaSpec, train_replica, validate_spec


def run_cell(
    base: ReplicaSpec,
    replicas: int | list[int],
    root: str | Path,
    hardware: str,
    *,
    progress: bool = True,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Train and store the replicas of one cell (hardware x dataset x model x setting).

    Replicas already complete in the store are skipped (resume), interrupted ones resume from
    their checkpoint. When the setting promises bit-identical replicas (CONTROL), their hashes
    are compared at the end and a difference raises `store.DeterminismViolation`.
    Returns the store's per-replica rows for the cell.
    """
    indices = list(range(replicas)) if isinstance(replicas, int) else list(replicas)
    if not indices:
        raise ValueError("replicas must be a positive count or a non-empty list of indices")
    for k in indices:  # validate everything before any work
        validate_spec(dataclasses.replace(base, replica=k), check_data=(k == indices[0]))
    dataset = None
    for k in indices:
        spec = dataclasses.replace(base, replica=k)
        path = store.replica_dir(root, hardware, spec.dataset, spec.model, spec.setting, k)
        if store.is_complete(path) and not overwrite:
            continue
        if overwrite:
            store.remove_replica(path)
        dataset = dataset or data_mod.load_dataset(spec.dataset, spec.data_root)
        result = train_replica(spec, dataset, checkpoint_dir=path, progress=progress)
        store.write_replica(root, hardware, result)
    runs = store.load_runs(root, hardware=hardware, dataset=base.dataset, model=base.model, setting=base.setting)
    cell = runs.replicas[runs.replicas["replica"].isin(indices)]
    if base.noise.expects_identical:
        problems = store.check_identical(cell)
        if problems:
            raise store.DeterminismViolation(
                f"{base.setting} replicas of {hardware}/{base.dataset}/{base.model} are not bit-identical: "
                + "; ".join(problems)
            )
    return cell
