"""One cell of the study: the replicas of one setting, trained and written to the run store.

A cell is hardware x dataset x model x setting. `run_cell` joins the two floors below it:
`train` (which knows nothing of the store) trains a replica, `store` writes it.

Run by the batch runner, a cell's kernel watches the runner (`watch_runner`): a runner killed
even by SIGKILL, or a papermill process killed by its runner, takes the training with it within
a fraction of a second instead of leaving an orphan that trains on.

Where the tooling is the subject (CUDA, non-deterministic kernels: IMPL, ALGO+IMPL) each replica
trains in a fresh Python process of its own (`train_in_child`), as the paper started a process per
run: replicas sharing a process would share cuDNN's autotune cache and the cuDNN/cuBLAS handles.
Every replica's manifest records its process, its peak device and host memory and the kernels (CUDA)
or ops (CPU) of a few of its steps.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import pandas as pd
import torch

from . import data as data_mod
from . import environment, params, store
from .train import KernelRecorder, ReplicaSpec, pid_alive, train_replica, validate_spec

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
    process_per_replica: str = "auto",
) -> pd.DataFrame:
    """Train and store the replicas of one cell (hardware x dataset x model x setting).

    Replicas already complete in the store are skipped (resume), interrupted ones resume from
    their checkpoint. When the setting promises bit-identical replicas (CONTROL), their hashes
    are compared at the end and a difference raises `store.DeterminismViolation`.
    dataset: the loaded data of `base.dataset` (loaded here, once, when None; a caller that runs
    several cells, or a test with a small MNIST-1D, passes it). It is moved to the device once
    per process, not per replica; loaded here, its host copy is then released.
    process_per_replica: "always" trains each replica in a fresh process of its own (a fresh
    cuDNN autotune cache and fresh cuDNN/cuBLAS handles, as the paper started a process per run),
    "never" all in this one, "auto" (`own_process`) a process per replica on CUDA where the
    kernels are non-deterministic (IMPL, ALGO+IMPL): there the tooling is the subject. A child's
    failure is raised here with its traceback (`ReplicaProcessError`); the replica resumes from
    its checkpoint on the next run, as in this process. Every replica's manifest records its
    peak memory and the kernels of a few of its steps (`train.KernelRecorder`).
    Returns the store's per-replica rows for the cell (with the extra test sets' accuracies, if any).
    """
    indices = list(range(replicas)) if isinstance(replicas, int) else list(replicas)
    if not indices:
        raise ValueError("replicas must be a positive count or a non-empty list of indices")
    if dataset is not None and dataset.name != base.dataset:
        raise ValueError(f"run_cell: the dataset passed is {dataset.name!r}, the spec's is {base.dataset!r}")
    if e := params.value_error("process_per_replica", process_per_replica):
        raise ValueError(f"run_cell: process_per_replica {e}")
    for k in indices:  # validate everything before any work
        validate_spec(dataclasses.replace(base, replica=k), check_data=(k == indices[0] and dataset is None))
    watch_runner()
    separate = own_process(base, process_per_replica)
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
            if separate:  # the child loads the data itself, unless the caller gave it
                train_in_child(spec, root, hardware, path, dataset, progress)
                continue
            # Once per process: on the device from the first replica on (a no-op for data already there).
            dataset = dataset or data_mod.load_dataset(spec.dataset, spec.data_root, **spec.dataset_options())
            dataset = dataset.to(spec.device)
            train_and_write(spec, root, hardware, path, dataset, progress, process="shared")
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


# ----------------------------------------------------------------------------- a replica, and its process
def own_process(spec: ReplicaSpec, process_per_replica: str) -> bool:
    """Whether the replicas of `spec`'s cell train in a process each: "always", "never", or ("auto") on
    CUDA under non-deterministic kernels (IMPL, ALGO+IMPL), where a process shared by the replicas
    would hand replica 0's autotuned algorithms to the others."""
    if process_per_replica == "auto":
        return environment.device_type(spec.device) == "cuda" and not spec.noise.deterministic
    return process_per_replica == "always"


class ReplicaProcessError(RuntimeError):
    """A replica's own process failed; the message holds its traceback (or how it died)."""


def train_and_write(
    spec: ReplicaSpec, root, hardware: str, path: Path, dataset: data_mod.Dataset | None, progress: bool, process: str
) -> None:
    """Train one replica (resuming from its checkpoint in `path`) and write it to the store, with the
    resources it used: peak device memory (CUDA: torch.cuda.max_memory_allocated, reset for this
    replica; the resident dataset included), peak host memory (ru_maxrss of this process: the
    replica's own in a process of its own, the process's peak so far in a shared one), the kernels
    of a few steps, and `process` ("own" or "shared")."""
    device = torch.device(spec.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    kernels = KernelRecorder(device)
    result = train_replica(spec, dataset, checkpoint_dir=path, progress=progress, kernels=kernels)
    resources = {
        "process": process,
        "peak_device_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "peak_host_bytes": peak_host_bytes(),
    }
    store.write_replica(root, hardware, result, resources=resources, kernels=kernels.result())


def peak_host_bytes() -> int:
    """The peak resident memory of this process so far, in bytes (ru_maxrss: kilobytes on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def train_in_child(
    spec: ReplicaSpec, root, hardware: str, path: Path, dataset: data_mod.Dataset | None, progress: bool
) -> None:
    """`train_and_write` in a fresh Python process (nothing of this process's torch state, autotune
    cache or library handles is inherited); blocks until it ends. Raises ReplicaProcessError with the
    child's traceback when it fails, or with how it died. The caller holds the replica's lock; the
    child writes the replica's files. A dataset given is sent on the CPU (each process moves it to the
    device once); without one the child loads the spec's.

    A subprocess of ``python -c``, not multiprocessing's spawn, which re-imports the caller's main
    script in the child (a script without an ``if __name__ == "__main__"`` guard would run again).
    Its arguments travel pickled on its stdin; its output and progress go where this process's do."""
    try:
        payload = pickle.dumps(
            (spec, str(root), hardware, str(path), None if dataset is None else dataset.to("cpu"), progress)
        )
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        raise ValueError(
            f"run_cell: the dataset passed cannot be sent to a replica's process ({type(e).__name__}: {e}); "
            "pass dataset=None (each process loads it) or process_per_replica='never'"
        ) from None
    # The child imports this very package, wherever it was imported from.
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(_PACKAGE_PARENT), os.environ.get("PYTHONPATH")]))
    )
    with tempfile.TemporaryDirectory(prefix="nnrandomness-replica-") as tmp:
        report = Path(tmp) / "traceback.txt"
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(report)], stdin=subprocess.PIPE, env=env)
        try:
            child.communicate(payload)
        finally:
            if child.poll() is None:  # this process is being interrupted: the replica's checkpoint stays
                child.kill()
                child.wait()
        failure = report.read_text() if report.exists() else None
    if failure is not None or child.returncode != 0:
        how = f"exit code {child.returncode}" if child.returncode >= 0 else f"killed by signal {-child.returncode}"
        raise ReplicaProcessError(
            f"replica {spec.replica} of {hardware}/{spec.dataset}/{spec.model}/{spec.setting} failed in its own "
            f"process ({how}): {failure or 'it ended without a report'}"
        )
    if not store.is_complete(path):
        raise ReplicaProcessError(f"replica {spec.replica}'s process ended without completing {path}")


_PACKAGE_PARENT = Path(__file__).resolve().parent.parent  # the directory that holds the nnrandomness package
_CHILD = "import sys; from nnrandomness.cell import child_main; child_main(sys.argv[1])"


def child_main(report: str) -> None:
    """The body of a replica's process (`train_in_child`): read its arguments from stdin, train and write
    the replica; on failure write the traceback to `report` and exit 1. It exits too when its parent is
    gone, or the runner (`watch_runner`), so that a killed caller leaves no replica training on."""
    spec, root, hardware, path, dataset, progress = pickle.load(sys.stdin.buffer)
    parent = os.getppid()

    def watch_parent():
        while os.getppid() == parent:
            time.sleep(WATCH_INTERVAL)
        os._exit(1)

    threading.Thread(target=watch_parent, name="nnrandomness-watch-parent", daemon=True).start()
    watch_runner()
    try:
        if dataset is not None:
            dataset = dataset.to(spec.device)
        train_and_write(spec, root, hardware, Path(path), dataset, progress, process="own")
    except BaseException:
        Path(report).write_text(traceback.format_exc())
        sys.exit(1)
