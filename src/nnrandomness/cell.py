"""One cell of the study: the replicas of one setting, trained and written to the run store.

A cell is hardware x dataset x model x setting. `run_cell` joins the two floors below it:
`train` (which knows nothing of the store) trains a replica, `store` writes it.

Run by the batch runner, a cell's kernel watches the runner (`watch_runner`): a runner killed
even by SIGKILL, or a papermill process killed by its runner, takes the training with it within
a fraction of a second instead of leaving an orphan that trains on.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import pandas as pd

from . import data as data_mod
from . import store
from .train import ReplicaSpec, pid_alive, train_replica, validate_spec

RUNNER_PID_ENV = "NNRANDOMNESS_RUNNER_PID"  # set by the batch runner in every job's environment
WATCH_INTERVAL = 0.2  # seconds between two looks at the runner and the kernel's parent
_watching = threading.Event()


def watch_runner() -> bool:
    """Exit this process as soon as the runner named by $NNRANDOMNESS_RUNNER_PID or this process's
    parent (papermill, for a kernel) is gone; a daemon thread, started once. False (nothing
    watched) outside a runner's job. A kernel killed so mid-epoch leaves its last checkpoint, from
    which the next run resumes to the same bits."""
    runner = os.environ.get(RUNNER_PID_ENV, "")
    if not runner.isdigit() or _watching.is_set():
        return runner.isdigit()
    runner_pid, parent = int(runner), os.getppid()

    def watch():
        while pid_alive(runner_pid) and os.getppid() == parent:
            time.sleep(WATCH_INTERVAL)
        os._exit(1)  # no cleanup to run: files land by atomic rename, temporaries are swept next time

    _watching.set()
    threading.Thread(target=watch, name="nnrandomness-watch-runner", daemon=True).start()
    return True


def run_cell(
    base: ReplicaSpec,
    replicas: int | list[int],
    root: str | Path,
    hardware: str,
    *,
    progress: bool = True,
    overwrite: bool = False,
    dataset: data_mod.Dataset | None = None,
) -> pd.DataFrame:
    """Train and store the replicas of one cell (hardware x dataset x model x setting).

    Replicas already complete in the store are skipped (resume), interrupted ones resume from
    their checkpoint. When the setting promises bit-identical replicas (CONTROL), their hashes
    are compared at the end and a difference raises `store.DeterminismViolation`.
    dataset: the loaded data of `base.dataset` (loaded here, once, when None; a caller that runs
    several cells, or a test with a small MNIST-1D, passes it).
    Returns the store's per-replica rows for the cell (with the extra test sets' accuracies, if any).
    """
    indices = list(range(replicas)) if isinstance(replicas, int) else list(replicas)
    if not indices:
        raise ValueError("replicas must be a positive count or a non-empty list of indices")
    if dataset is not None and dataset.name != base.dataset:
        raise ValueError(f"run_cell: the dataset passed is {dataset.name!r}, the spec's is {base.dataset!r}")
    for k in indices:  # validate everything before any work
        validate_spec(dataclasses.replace(base, replica=k), check_data=(k == indices[0] and dataset is None))
    watch_runner()
    for k in indices:
        spec = dataclasses.replace(base, replica=k)
        path = store.replica_dir(root, hardware, spec.dataset, spec.model, spec.setting, k)
        if store.is_complete(path) and not overwrite:
            continue
        # One writer per replica: a second process on the same replica waits, then finds it complete.
        with store.lock(path, wait=True):
            if store.is_complete(path) and not overwrite:
                continue
            if overwrite:  # its files, not the directory: the lock is on the directory
                for child in path.iterdir():
                    if child.is_dir():
                        store.remove_replica(child)
                    else:
                        child.unlink()
            store.sweep_temporaries(path)  # a killed writer's leftovers (no one else writes here now)
            dataset = dataset or data_mod.load_dataset(spec.dataset, spec.data_root, **spec.dataset_options())
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
