"""What does a papermill job cost beyond its training? Ratios measured in one process.

    .venv/bin/python benchmarks/bench_batch.py [--replicas 10] [--epochs 20] [--repeats 3]

Run from the repository root. One job of the default plan (digits, SmallCNN, CONTROL, its recipe
with --replicas and --epochs) is timed three ways, interleaved, each into a fresh store:

* job: `batch.run_job`, what the runner does per job (papermill process, kernel start, the
  notebook's imports, training, the store, the charts and tables, the stripped executed copy);
* overhead: the same job again on its now complete store, so the notebook trains nothing (run_cell
  skips complete replicas): everything a job costs besides training;
* training: `cell.run_cell` in this process (already warm), the same replicas into a fresh store.

Reported: medians over --repeats, overhead/job (the share of a job that is not training) and
job/training (the slowdown of a job against training in-process).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

from nnrandomness import batch, cell, plan


def one_job(replicas: int, epochs: int, root: Path) -> plan.Job:
    """The default plan's digits/smallcnn/CONTROL job with `replicas` x `epochs`, writing under root."""
    job = next(j for j in plan.load_plan("plans/default.yaml").jobs if j.name == "cpu-1t/digits/smallcnn/CONTROL")
    params = {**job.parameters, "replicas": replicas, "epochs": epochs, "output_root": str(root / "runs")}
    return dataclasses.replace(job, parameters=params, executed=root / "executed.ipynb")


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    def check(result: batch.JobResult) -> None:
        if result.status != "done":
            raise SystemExit(f"the job failed: {result.reason}")

    # Warm this process up (imports, data, first training steps) so that `training` is steady.
    with tempfile.TemporaryDirectory() as tmp:
        job = one_job(1, 1, Path(tmp))
        cell.run_cell(job.spec(0), 1, job.output_root, job.hardware, progress=False)

    times = {"job": [], "overhead": [], "training": []}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            job = one_job(args.replicas, args.epochs, Path(tmp))
            times["job"].append(timed(lambda job=job: check(batch.run_job(job))))
            times["overhead"].append(timed(lambda job=job: check(batch.run_job(job))))
        with tempfile.TemporaryDirectory() as tmp:
            job = one_job(args.replicas, args.epochs, Path(tmp))
            times["training"].append(
                timed(
                    lambda job=job: cell.run_cell(
                        job.spec(0), args.replicas, job.output_root, job.hardware, progress=False
                    )
                )
            )

    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"one job: {args.replicas} replicas x {args.epochs} epochs, digits/smallcnn/CONTROL, 1 thread, "
        f"median of {args.repeats}"
    )
    for name, values in times.items():
        print(f"  {name:<9} {med[name]:6.2f} s   ({', '.join(f'{v:.2f}' for v in values)})")
    print(f"overhead / job      = {med['overhead'] / med['job']:.2f}  (share of a job that is not training)")
    print(f"job / training      = {med['job'] / med['training']:.2f}  (a job against training in-process)")
    print(f"job - overhead      = {med['job'] - med['overhead']:.2f} s  (compare: training {med['training']:.2f} s)")


if __name__ == "__main__":
    main()
