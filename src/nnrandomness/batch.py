"""Run a plan: one papermill execution of the training notebook per job, resumable.

``nnrandomness run PLAN`` validates the whole plan first (`plan.load_plan`) and reads the run
store: a job whose replicas are all complete there (manifest and checksums) is skipped, so
re-running a finished plan does no work and an interrupted one resumes (inside a job,
`cell.run_cell` skips complete replicas and resumes a killed one from its checkpoint). The
other jobs run

* on a local pool (``--workers N``) that never oversubscribes the CPU: a job holds `threads`
  CPU slots and the running jobs hold at most ``--cpus`` (torch at 2 threads on 2 busy cores runs
  ~30x slower); a job with more threads than ``--cpus`` holds them all, so it runs alone (its
  results are the same, only slower: a warning says so); jobs start in plan order, so a wide job
  is never overtaken forever. ``--gpus 0,1``
  gives every running job a GPU through CUDA_VISIBLE_DEVICES, ``--jobs-per-gpu K`` jobs per GPU at
  once, and sizes the pool to match (GPUs x K; a different ``--workers`` is refused);
* or as Ray tasks (``--ray ADDRESS``: "auto" for a running cluster, "local" for a new one on this
  machine, or a cluster address), each asking for `threads` CPUs and one GPU where the device is
  CUDA. Paths must then be the same on every node (shared storage).

Each job is a ``python -m papermill`` subprocess with its own environment, so a job cannot take
the runner down, its GPU pinning and its ATen CPU capability (``ATEN_CPU_CAPABILITY``, which torch
reads once per process) are set before its kernel starts, and its timeout (plan key
``timeout``, ``--timeout``) is a kill. Failures before the notebook's first cell starts (the
kernel did not come up: "Kernel didn't respond", "Kernel died before replying to kernel_info",
ZMQ port races between parallel starts) are retried up to ``--retries`` times; a failure in a
cell never is. Every job's executed notebook is kept under the plan's executed_root, failed ones
too, with papermill's timings removed so that the same run gives the same file.

Before any kernel starts, every output and executed directory is created and written to: a
missing permission or a read-only file system is one clear error naming the path. Runners
sharing a store split the work: each job holds a lock on its setting's directory in the store
(`store.lock`, released by the OS when its holder dies); a runner that finds a job locked
reports it "running elsewhere", goes on with the others, and at the end waits for that lock and
finds the job done by the other runner (or runs it, if that runner died). A job's papermill runs
in a process group of its own that the runner kills on SIGTERM/SIGINT; on Linux it also dies
with the runner (PR_SET_PDEATHSIG), and its kernel watches the runner (`cell.watch_runner`), so
that even a SIGKILLed runner leaves no training behind. Temporary folders are named after their
runner's pid: those of dead runners are swept by the next job.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import environment
from .cell import RUNNER_PID_ENV
from .executed import START_TIMEOUT
from .executed import keep as keep_executed
from .executed import read as read_notebook

KERNEL_START_RETRIES = 3  # extra tries of a job whose kernel did not start
RETRY_PAUSE = 1.0  # seconds between tries: lets a port race between parallel kernel starts pass
TEMPORARY_PREFIX = "nnrandomness-job-"  # + "<runner pid>-": a job's temporary folder
ELSEWHERE = "running elsewhere"  # the reason of a job another runner holds


# ----------------------------------------------------------------------------- the CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plan", type=Path, help="a plan file (YAML), e.g. plans/default.yaml")
    parser.add_argument("--dry-run", action="store_true", help="validate, list the jobs and their state, run nothing")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="jobs running at once on the local pool (default 1; with --gpus: GPUs x --jobs-per-gpu)",
    )
    parser.add_argument(
        "--cpus",
        type=int,
        default=None,
        help="CPU slots the running jobs share; a job holds `threads` of them (default: all cores; a dry run of a "
        "plan for another machine: enough for every GPU slot)",
    )
    parser.add_argument(
        "--gpus", default=None, help="comma-separated GPU ids: each running job gets one as CUDA_VISIBLE_DEVICES"
    )
    parser.add_argument(
        "--jobs-per-gpu",
        type=int,
        default=1,
        help="jobs sharing one GPU at a time (default 1; small models leave a GPU mostly idle)",
    )
    parser.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help='run the jobs as Ray tasks: "auto" (a running cluster), "local" (start one here), or a cluster address',
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds per job, overriding the plan's (and its cells') timeouts"
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=KERNEL_START_RETRIES,
        help=f"extra tries of a job whose kernel failed to start (default {KERNEL_START_RETRIES})",
    )
    parser.add_argument("--output-root", default=None, help="the run store, overriding the plan's output_root")
    parser.add_argument(
        "--allow-dirty",
        action="store_true",
        help="write into a committed store from a checkout with uncommitted changes (recorded as +dirty)",
    )
    parser.add_argument(
        "--executed-root", default=None, help="where executed notebooks go, overriding the plan's executed_root"
    )
    ray_options = {  # option: (metavar, type, help)
        "--ray-memory": (
            "GIB",
            _option_type(float, ray_memory_error, _RAY_MEMORY_RULE),
            f"GiB of memory each Ray job reserves (Ray's memory resource; default {RAY_JOB_MEMORY_GIB:g}, 0: none): "
            "a node starts no more jobs than its memory holds",
        ),
        "--ray-retries": (
            "N",
            _option_type(int, ray_retries_error, _RAY_RETRIES_RULE),
            f"extra tries of a Ray job whose worker process or node died (default {RAY_SYSTEM_RETRIES}; safe: a job "
            "skips its complete replicas and resumes the others); a job that fails in its notebook is a result, "
            "never retried. Before any job starts, every node that can run one must see the repository, the data, "
            "the store and the executed root at this machine's paths (a shared file system); CUDA jobs get the "
            "hardware label of the GPU that trains them",
        ),
    }
    for option, (metavar, parse, help_text) in ray_options.items():
        parser.add_argument(option, type=parse, default=None, metavar=metavar, help=help_text)


def main(args: argparse.Namespace) -> int:
    """Validate, then run the plan's pending jobs. 0: all done or skipped; 1: a job failed;
    2: the plan or the options are invalid (nothing ran, nothing was written)."""
    from . import plan as plan_mod

    load = dict(output_root=args.output_root, executed_root=args.executed_root, timeout=args.timeout)
    try:
        # On Ray the nodes are checked for the data and the CPU capabilities (check_cluster), and a CUDA
        # job's hardware label is derived by the worker that trains it: a CPU-only head node may drive.
        plan = plan_mod.load_plan(args.plan, **load, check_data=not args.ray)
    except plan_mod.PlanError as e:
        # A dry run shows a plan meant for another machine (a GPU plan on a laptop) all the same: what
        # this machine lacks (CUDA, the datasets' files) becomes a warning; the plan's own errors stay errors.
        try:
            plan = plan_mod.load_plan(args.plan, **load, check_data=False) if args.dry_run else None
        except plan_mod.PlanError:
            plan = None
        if plan is None:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(
            "WARNING: this machine cannot run the plan as it is (shown all the same: a dry run); "
            + "\n  ".join([f"{len(e.errors)} problem(s) here:", *e.errors]),
            file=sys.stderr,
        )
        foreign = True
    else:
        foreign = False
    gpus = [g.strip() for g in args.gpus.split(",")] if args.gpus else None
    host_note = ""
    if args.cpus is None:
        args.cpus = os.cpu_count() or 1
        if foreign and gpus and args.dry_run and not args.ray:
            # A GPU plan dry-run elsewhere (a laptop): the schedule of the host it is meant for, which gives
            # every GPU slot its jobs' threads; this machine's few cores would say nothing about that host.
            host = len(gpus) * max(args.jobs_per_gpu, 1) * max(job.threads for job in plan.jobs)
            if host > args.cpus:
                host_note = f"(the schedule of a GPU host with {host} CPU slots; this machine has {args.cpus}: "
                host_note += "--cpus sets them)"
                args.cpus = host
    problems = _option_problems(args, gpus)
    # One slot per job a GPU may run at once, round robin (0, 1, .., 0, 1, ..): the first jobs
    # spread over the GPUs. The pool is as large as the slots unless --workers says otherwise.
    slots = [g for _ in range(max(args.jobs_per_gpu, 1)) for g in gpus] if gpus else None
    if args.workers is None:
        args.workers = len(slots) if slots else 1
    elif slots and args.workers != len(slots):
        problems.append(
            f"--workers {args.workers} contradicts --gpus {args.gpus} x --jobs-per-gpu {args.jobs_per_gpu} "
            f"({len(slots)} GPU slots): leave --workers out"
        )
    states = {job.name: store_state(job) for job in plan.jobs}
    problems += [f"{name}: {c}" for name, (_, conflicts) in states.items() for c in conflicts]
    pending = [job for job in plan.jobs if states[job.name][0]]
    if not args.dry_run and (problem := provenance_problem(pending)):
        if not args.allow_dirty:
            problems.append(problem + "; commit first, or pass --allow-dirty")
        else:
            print(f"WARNING: {problem}: these runs will record a '+dirty' commit", file=sys.stderr)
    if not args.dry_run:  # a dry run writes nothing, not even the roots
        problems += writable_problems(plan.jobs)
    if problems:
        print("error: nothing was run:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2

    print(
        f"plan {plan.name!r} ({args.plan}): {len(plan.jobs)} jobs, {len(plan.jobs) - len(pending)} complete, "
        f"{len(pending)} to run"
    )
    for job in plan.jobs:
        if job.threads > args.cpus and not args.ray:
            print(
                f"WARNING: {job.name} has threads={job.threads}, more than the {args.cpus} CPU slots (--cpus): "
                "it runs alone, holding them all (the results are the same, only slower)",
                file=sys.stderr,
            )
    if args.dry_run:
        cache: dict = {}
        estimates = {job.name: estimate(job, cache) for job in plan.jobs}
        _print_jobs(plan.jobs, states, estimates)
        labels = dict.fromkeys(job.hardware for job in plan.jobs)
        print(f"hardware labels: {', '.join(labels)} (each CPU tooling configuration is a hardware of its own)")
        at_once = 0
        if not args.ray:
            if host_note:
                print(host_note)
            print(schedule(pending, workers=args.workers, cpus=args.cpus, gpus=slots))
            at_once = concurrency(pending, workers=args.workers, cpus=args.cpus, gpus=slots)
        else:
            print(
                ray_schedule(
                    pending, address=args.ray, cpus=args.cpus, memory=args.ray_memory, system_retries=args.ray_retries
                )
            )
        print(estimate_summary(plan.jobs, states, estimates, at_once))
        for job in pending:  # a job is killed at its timeout: one that cannot finish in it should be split
            e = estimates[job.name]
            if e.replica_seconds is not None and len(states[job.name][0]) * e.replica_seconds > job.timeout:
                print(
                    f"WARNING: {job.name}: estimated {duration(len(states[job.name][0]) * e.replica_seconds)} "
                    f"({e.source}), more than its timeout of {duration(job.timeout)} (plan key timeout, --timeout)",
                    file=sys.stderr,
                )
        return 0

    started = time.monotonic()
    results = [JobResult(job.name, "skipped", "complete in the store") for job in plan.jobs if not states[job.name][0]]
    try:
        with _stopping_jobs_on_signals():
            results += _dispatch(pending, args, slots, wait_lock=False)
            # Jobs another runner held: wait for its lock, then find them done (or run them, if it died).
            elsewhere = [r.name for r in results if r.status == "elsewhere"]
            if elsewhere:
                print(f"waiting for {len(elsewhere)} job(s) running elsewhere: {', '.join(elsewhere)}")
                results = [r for r in results if r.status != "elsewhere"]
                results += _dispatch([j for j in pending if j.name in elsewhere], args, slots, wait_lock=True)
    except RayClusterError as e:
        print(f"error: nothing was run: {e}", file=sys.stderr)
        return 2
    order = {job.name: i for i, job in enumerate(plan.jobs)}
    _print_summary(sorted(results, key=lambda r: order[r.name]), time.monotonic() - started)
    for warning in tooling_warnings(plan.jobs):
        print(f"WARNING: {warning}")
    return 1 if any(r.status == "failed" for r in results) else 0


def _dispatch(jobs, args, gpus, wait_lock: bool) -> list[JobResult]:
    if not jobs:
        return []
    if args.ray:
        return run_ray(
            jobs,
            address=args.ray,
            cpus=args.cpus,
            retries=args.retries,
            wait_lock=wait_lock,
            memory=args.ray_memory,
            system_retries=args.ray_retries,
        )
    return run_local(jobs, workers=args.workers, cpus=args.cpus, gpus=gpus, retries=args.retries, wait_lock=wait_lock)


def provenance_problem(pending, commit: str | None = None) -> str | None:
    """Why the pending jobs must not run here (None when they may): a committed store (git tracks
    its files, as data/runs) gets replicas from a clean checkout only, so that the commit each
    manifest records is the code that made it. Untracked files do not count; only pending jobs
    matter (a finished plan re-runs as a no-op on any tree). commit: the package checkout's
    (`environment.git_commit()`, read when None)."""
    commit = commit or environment.git_commit()
    if not commit or not commit.endswith("+dirty"):
        return None
    committed = sorted({str(j.output_root) for j in pending if environment.tracked_by_git(j.output_root)})
    if not committed:
        return None
    return (
        f"the committed store {', '.join(committed)} would get {len(pending)} job(s) from a checkout with "
        f"uncommitted changes ({commit})"
    )


def writable_problems(jobs) -> list[str]:
    """Create the store and the executed notebooks' folder, then each job's directories in them
    (its setting's in the store, which `run_job` locks), and write a file in each: one problem per
    refusing root (its jobs' directories are not tried), naming it. Checked before any kernel
    starts: a job would otherwise fail its kernel seconds later, or fail only when keeping its
    notebook, after the training was done."""
    if not jobs:
        return []
    executed_root = Path(os.path.commonpath([job.executed.parent for job in jobs]))
    checks = [
        ("output root", root, [job.replica_dir(0).parent for job in jobs if job.output_root == root])
        for root in dict.fromkeys(job.output_root for job in jobs)
    ]
    checks.append(("executed root", executed_root, [job.executed.parent for job in jobs]))
    problems = []
    for what, root, dirs in checks:
        problem = next(filter(None, map(_unwritable, [root, *dict.fromkeys(dirs)])), None)
        if problem:
            problems.append(f"the {what} is not writable: {problem}")
    return problems


def _unwritable(path: Path) -> str | None:
    """None when `path` is (made) a directory where a file can be written; else 'path: why'."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        return f"{path}: {e.strerror or e}"
    return None


def _option_problems(args, gpus) -> list[str]:
    problems = []
    if args.workers is not None and args.workers < 1:
        problems.append(f"--workers must be >= 1, got {args.workers}")
    if args.jobs_per_gpu < 1:
        problems.append(f"--jobs-per-gpu must be >= 1, got {args.jobs_per_gpu}")
    elif args.jobs_per_gpu > 1 and gpus is None:
        problems.append("--jobs-per-gpu needs --gpus (it says how many jobs share each listed GPU)")
    if args.cpus is None or args.cpus < 1:
        problems.append(f"--cpus must be >= 1, got {args.cpus}")
    if args.retries < 0:
        problems.append(f"--retries must be >= 0, got {args.retries}")
    if gpus is not None and (not all(gpus) or len(set(gpus)) < len(gpus)):
        problems.append(f"--gpus must list distinct GPU ids separated by commas, got {args.gpus!r}")
    if gpus is not None and args.ray:
        problems.append("--gpus is for the local pool; Ray assigns GPUs to tasks itself")
    if not args.ray and (args.ray_memory is not None or args.ray_retries is not None):
        problems.append("--ray-memory and --ray-retries are for Ray jobs: add --ray ADDRESS, or leave them out")
    return problems


# ----------------------------------------------------------------------------- store state
# A store replica planned again with another recipe would be skipped by run_cell and silently mix
# recipes in one cell; such a conflict stops the plan. data_root says where files are, not what
# is trained, so it may differ.
_IGNORED_SPEC_FIELDS = ("data_root",)


def store_state(job) -> tuple[list[int], list[str]]:
    """(replicas of `job` not complete in the store, conflicts with complete ones)."""
    from . import store, train

    missing, conflicts = [], []
    for k in range(job.replicas):
        try:
            manifest = store.read_manifest(job.replica_dir(k))
        except ValueError:
            missing.append(k)
            continue
        # A field added to the spec later is left out of a manifest while it holds its default: compare
        # both sides with those defaults filled in, over the union of their fields.
        later = {f: getattr(train.ReplicaSpec(), f) for f in train.LATER_FIELDS}
        stored, wanted = {**later, **manifest["spec"]}, {**later, **job.spec(k).to_dict()}
        diff = [
            f"{f}: stored {stored.get(f)!r}, planned {wanted.get(f)!r}"
            for f in sorted(stored.keys() | wanted.keys())
            if f not in _IGNORED_SPEC_FIELDS and stored.get(f) != wanted.get(f)
        ]
        if diff:
            conflicts.append(
                f"replica-{k} in the store was trained with another recipe ({'; '.join(diff)}); "
                "remove it or use another output_root"
            )
    return missing, conflicts


def schedule(pending, *, workers: int, cpus: int, gpus: list[str] | None) -> str:
    """What the local pool can run at once, and each limit: a line for the dry run."""
    if not pending:
        return "schedule: nothing to run"
    slots = min(cpu_slots(job, cpus) for job in pending)  # the narrowest jobs: the most that can run at once
    parts = [f"{workers} workers", f"{cpus} CPU slots at {slots}+ per job"]
    if gpus is not None:
        parts.append(f"{len(gpus)} GPU slots ({len(set(gpus))} GPUs x {len(gpus) // len(set(gpus))} per GPU)")
    at_once = concurrency(pending, workers=workers, cpus=cpus, gpus=gpus)
    return f"schedule: up to {at_once} of {len(pending)} jobs at once ({'; '.join(parts)})"


def concurrency(pending, *, workers: int, cpus: int, gpus: list[str] | None) -> int:
    """The most jobs of `pending` the local pool runs at once: workers, CPU slots (for the narrowest
    jobs) and GPU slots all limit it."""
    if not pending:
        return 0
    slots = min(cpu_slots(job, cpus) for job in pending)
    return min(len(pending), workers, cpus // slots, *([len(gpus)] if gpus is not None else []))


# ----------------------------------------------------------------------------- estimated device time
# Seconds of training per epoch of one replica where the store holds no replica of a job's dataset and
# model yet: (dataset, model, device type) -> seconds, measured on this project's machine kind (2 cores,
# idle, 1 thread; README "Measured figures", benchmarks/bench_train.py, 20 epochs of the default recipe).
# GPU figures belong here once a GPU host has measured them; until then a GPU job without runs in its
# store is "unknown".
EPOCH_SECONDS = {
    ("digits", "smallcnn", "cpu"): 0.61 / 20,
    ("mnist1d", "cnn1d", "cpu"): 2.2 / 20,
    ("mnist1d", "mlp1d", "cpu"): 0.57 / 20,
}


@dataclass(frozen=True)
class Estimate:
    """The estimated device time of one replica of a job, and where it comes from."""

    replica_seconds: float | None  # None: unknown
    source: str  # "store (n replicas)", "store, other hardware (labels)", "table" or "unknown"


def estimate(job, _cache: dict | None = None) -> Estimate:
    """One replica of `job`: the median seconds per epoch of the complete replicas in its store of the same
    dataset and model, on the same hardware label, else on another label of the same device type (say
    another GPU model: marked so), times the job's epochs, plus their median evaluation time; else
    `EPOCH_SECONDS` x epochs; else unknown. Manifests are read, not their files' checksums (a dry run
    stays quick). `_cache`: manifests already read, per (store, dataset, model)."""
    from . import environment as env_mod
    from . import store

    epochs, device = job.parameters["epochs"], env_mod.device_type(job.parameters["device"])
    key = (str(job.output_root), job.dataset, job.model)
    if _cache is None or key not in _cache:
        manifests = []
        for path in store.iter_replica_dirs(job.output_root, dataset=job.dataset, model=job.model):
            try:
                manifests.append(store.read_manifest(path, verify=False))
            except ValueError:
                continue  # incomplete or damaged: it says nothing about time
        if _cache is not None:
            _cache[key] = manifests
    manifests = _cache[key] if _cache is not None else manifests
    timed = [m for m in manifests if (m["timings"].get("train_seconds") or 0) > 0 and m["spec"]["epochs"] > 0]
    same = [m for m in timed if m["hardware"] == job.hardware]
    alike = [m for m in timed if env_mod.device_type(m["spec"]["device"]) == device]
    for found, source in (
        (same, f"store ({len(same)} replicas)"),
        (alike, f"store, other hardware ({', '.join(sorted({m['hardware'] for m in alike}))})"),
    ):
        if found:
            per_epoch = _median([m["timings"]["train_seconds"] / m["spec"]["epochs"] for m in found])
            evaluation = _median(
                [(m["timings"].get("eval_seconds") or 0) + (m["timings"].get("extra_eval_seconds") or 0) for m in found]
            )
            return Estimate(per_epoch * epochs + evaluation, source)
    if (job.dataset, job.model, device) in EPOCH_SECONDS:
        return Estimate(EPOCH_SECONDS[job.dataset, job.model, device] * epochs, "table")
    if device == "cuda" and job.dataset in TRAIN_SHAPES:
        return Estimate(gpu_model_seconds(job), "model: no GPU run yet")
    return Estimate(None, "unknown")


# A GPU job whose store holds no run yet is estimated by a model, not a measurement: training costs about
# 3x the forward FLOPs (forward, and backward for inputs and weights) of every training example, at
# GPU_TRAIN_FLOPS, and every optimiser step at least GPU_STEP_FLOOR_S (a small model is bound by kernel
# launches, not FLOPs). GPU_TRAIN_FLOPS is what published fp32 ResNet-50 training reaches on a V100
# (~360 images/s x 3 x 8.2 GFLOP ~ 9 TFLOP/s, ~55 % of its peak); the first runs in a store replace it.
GPU_TRAIN_FLOPS = 9e12
GPU_STEP_FLOOR_S = 0.004
# dataset -> (training examples, input channels, default side in pixels, classes), for the model above
# (the files themselves may be on another machine). The side follows the job's image_size where it has one.
TRAIN_SHAPES = {
    "cifar10": (50_000, 3, 32, 10),
    "cifar100": (50_000, 3, 32, 100),
    "celeba": (162_770, 3, 64, 40),
    "imagenet": (1_281_167, 3, 64, 1000),
    "imagenet_stream": (1_281_167, 3, 224, 1000),
}
_forward_flops_cache: dict[tuple, int] = {}


def forward_flops(model: str, channels: int, side: int, classes: int) -> int:
    """FLOPs of one forward pass of one image through `model` (torch's FlopCounterMode, 2 per
    multiply-add), counted on the meta device: no memory, no weights initialised."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from . import models

    key = (model, channels, side, classes)
    if key not in _forward_flops_cache:
        with torch.device("meta"):
            net = models.MODELS[model](classes, channels)
            x = torch.empty(1, channels, side, side)
        with FlopCounterMode(display=False) as counter:
            net(x)
        _forward_flops_cache[key] = int(counter.get_total_flops())
    return _forward_flops_cache[key]


def gpu_model_seconds(job) -> float:
    """The modelled device seconds of one replica of a CUDA `job` (see GPU_TRAIN_FLOPS)."""
    n, channels, side, classes = TRAIN_SHAPES[job.dataset]
    side = job.parameters.get("image_size") or side
    flops = 3 * forward_flops(job.model, channels, side, classes) * n
    steps = math.ceil(n / job.parameters["batch_size"])
    return job.parameters["epochs"] * max(flops / GPU_TRAIN_FLOPS, steps * GPU_STEP_FLOOR_S)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def duration(seconds: float) -> str:
    """'40 s', '12 min', '3.4 h', '2.1 d'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def estimate_summary(jobs, states, estimates: dict[str, Estimate], at_once: int) -> str:
    """The dry run's last line: the device time of the replicas still to run, summed over the jobs with an
    estimate, and the wall time that is at least (the sum over `at_once` jobs running side by side)."""
    pending = [j for j in jobs if states[j.name][0]]
    known = [j for j in pending if estimates[j.name].replica_seconds is not None]
    total = sum(len(states[j.name][0]) * estimates[j.name].replica_seconds for j in known)
    unknown = len(pending) - len(known)
    line = f"estimated device time: {duration(total)} for {len(known)} of {len(pending)} jobs to run"
    if known and at_once:
        longest = max(len(states[j.name][0]) * estimates[j.name].replica_seconds for j in known)
        line += f"; wall time at {at_once} at once: at least {duration(max(total / at_once, longest))}"
    if unknown:
        line += f"; {unknown} job(s) unknown (no replica of their dataset and model in the store, not in EPOCH_SECONDS)"
    if modelled := sum(estimates[j.name].source.startswith("model") for j in known):
        line += f"; {modelled} of them modelled from FLOPs, not measured (batch.GPU_TRAIN_FLOPS)"
    return line


def tooling_warnings(jobs) -> list[str]:
    """`analysis.identical_tooling_warnings` over the cells of `jobs` that can earn one (CUDA, a setting of
    non-deterministic kernels that varies no algorithmic source: IMPL), read from their stores; a CPU
    plan reads nothing."""
    from . import analysis, noise, store

    warnings = []
    for job in jobs:
        setting = noise.get_setting(job.setting)
        if job.uses_gpu and not setting.deterministic and not setting.varied and not setting.perturb_ulp:
            runs = store.load_runs(
                job.output_root, hardware=job.hardware, dataset=job.dataset, model=job.model, setting=job.setting
            )
            warnings += analysis.identical_tooling_warnings(runs)
    return warnings


def cpu_slots(job, cpus: int) -> int:
    """The CPU slots `job` holds on a pool of `cpus`: its threads, or all of them when it has more
    threads than the pool has slots (then it runs alone, slower, with the same results)."""
    return min(job.threads, cpus)


def _print_jobs(jobs, states, estimates: dict[str, Estimate] | None = None) -> None:
    """The dry run's table: a job a line, with its state and, given `estimates`, its estimated device
    time (replicas still to run x one replica's estimate, and where that comes from)."""
    width = max(len(j.name) for j in jobs)
    print(f"{'job':<{width}}  replicas  threads  timeout  state" + ("  estimated device time" if estimates else ""))
    for job in jobs:
        missing = states[job.name][0]
        state = "complete" if not missing else f"to run ({job.replicas - len(missing)}/{job.replicas} replicas done)"
        line = f"{job.name:<{width}}  {job.replicas:>8}  {job.threads:>7}  {job.timeout:>6.0f}s  {state}"
        if estimates and missing:
            e = estimates[job.name]
            line += "  " + (
                f"{duration(len(missing) * e.replica_seconds)} ({len(missing)} x {duration(e.replica_seconds)}, "
                f"{e.source})"
                if e.replica_seconds is not None
                else "unknown"
            )
        print(line)


# ----------------------------------------------------------------------------- one job
@dataclass
class JobResult:
    name: str
    status: str  # "done", "skipped" or "failed"
    reason: str = ""
    seconds: float = 0.0  # wall clock of the job, all tries
    attempts: int = 0  # papermill executions (1 + kernel-start retries)


def job_environment(job, gpu: str | None = None) -> dict[str, str]:
    """The environment a job's papermill process and kernel start with."""
    env = dict(os.environ)
    # Per-replica bars would put timings into the executed notebook; the runner shows its own bar.
    env["TQDM_DISABLE"] = "1"
    # The job's CPU slots: torch is pinned by the notebook, OpenMP/MKL users outside torch here.
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(job.threads)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu  # set before the kernel starts: CUDA reads it once
    # torch reads it once per process, before the kernel's first cell; "default" is the variable unset,
    # so that a value exported in the runner's shell cannot leak into a default job.
    if (capability := environment.cpu_capability_env(job.cpu_capability)) is None:
        env.pop(environment.CPU_CAPABILITY_ENV, None)
    else:
        env[environment.CPU_CAPABILITY_ENV] = capability
    env[RUNNER_PID_ENV] = str(os.getpid())  # the kernel exits when this process does (cell.watch_runner)
    return env


def run_job(job, *, retries: int = KERNEL_START_RETRIES, gpu: str | None = None, wait_lock: bool = False) -> JobResult:
    """Execute one job with papermill (retrying kernel-start failures) and keep its executed notebook.

    Holds the job's lock in the store throughout; a job another runner holds is "elsewhere" at
    once, or, with `wait_lock`, once that lock is free, "skipped" when the other runner completed it.
    Never raises for a failed job: the reason is in the result. Runs in a thread of the local
    pool or as the body of a Ray task.
    """
    from . import store

    started = time.monotonic()
    sweep_job_temporaries()
    with store.lock(job.replica_dir(0).parent, wait=wait_lock) as held:
        if not held:
            return JobResult(job.name, "elsewhere", ELSEWHERE)
        if all(store.is_complete(job.replica_dir(k)) for k in range(job.replicas)):
            return JobResult(job.name, "skipped", "done by another runner", time.monotonic() - started)
        kind, reason, attempt = _execute(job, retries, job_environment(job, gpu), started + job.timeout)
        if kind == "ok":
            incomplete = [k for k in range(job.replicas) if not store.is_complete(job.replica_dir(k))]
            if incomplete:  # a notebook that "succeeds" without its replicas is a failure all the same
                kind, reason = "error", f"the notebook finished but replicas {incomplete} are not complete in the store"
    if kind == "kernel-start":
        reason = f"the kernel did not start in {attempt} tries: {reason}"
    return JobResult(job.name, "done" if kind == "ok" else "failed", reason, time.monotonic() - started, attempt)


def _execute(job, retries: int, env: dict, deadline: float) -> tuple[str, str, int]:
    """papermill tries in a temporary folder of this runner's; the executed notebook is kept
    (unless the runner is stopping). (kind, reason, tries)."""
    with tempfile.TemporaryDirectory(prefix=f"{TEMPORARY_PREFIX}{os.getpid()}-") as tmp:
        executed, params = Path(tmp) / "executed.ipynb", Path(tmp) / "parameters.yaml"
        # safe_dump, not JSON: papermill reads the file as YAML, which takes JSON's 1e-05 for a string.
        params.write_text(yaml.safe_dump(job.parameters))
        attempt = 0
        while True:
            attempt += 1
            kind, reason = _papermill(job, executed, params, env, deadline)
            if kind != "kernel-start" or attempt > retries or time.monotonic() + RETRY_PAUSE >= deadline:
                break
            time.sleep(RETRY_PAUSE)
        if kind != "stopped":
            keep_executed(executed, job.executed)
    return kind, reason, attempt


def sweep_job_temporaries() -> list[Path]:
    """Remove the temporary folders of runners that are gone (SIGKILLed: nothing of theirs ran)."""
    from .train import pid_alive

    removed = []
    for path in Path(tempfile.gettempdir()).glob(f"{TEMPORARY_PREFIX}*-*"):
        pid = path.name[len(TEMPORARY_PREFIX) :].partition("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _papermill(job, executed: Path, params: Path, env: dict, deadline: float) -> tuple[str, str]:
    """One papermill execution; (kind, reason) with kind ok | error | timeout | kernel-start | stopped
    (the runner got SIGTERM/SIGINT)."""
    cmd = [
        sys.executable,
        "-c",
        _DIE_WITH_RUNNER,
        str(os.getpid()),
        str(job.notebook),
        str(executed),
        "-f",
        str(params),
        "--cwd",
        str(job.cwd),
        "--no-progress-bar",
        "--start-timeout",
        str(START_TIMEOUT),
    ]
    executed.unlink(missing_ok=True)
    # A session (so a process group) of its own: the runner kills the group when it is stopped.
    with _RUNNING_LOCK:
        if _STOPPING.is_set():
            return "stopped", "the runner was stopped"
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        _RUNNING.add(proc)
    try:
        log, _ = proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        return "timeout", f"timed out after {job.timeout:.0f} s (the plan's timeout, or --timeout)"
    finally:
        with _RUNNING_LOCK:
            _RUNNING.discard(proc)
    if _STOPPING.is_set():
        return "stopped", "the runner was stopped"
    if proc.returncode == 0:
        return "ok", ""
    last_line = next((line for line in reversed(log.strip().splitlines()) if line.strip()), "no output")
    nb = read_notebook(executed)
    if nb is None and executed.exists():
        return "error", f"{last_line} (and the executed notebook is unreadable)"
    if nb is None or not any(c.get("metadata", {}).get("papermill", {}).get("start_time") for c in nb["cells"]):
        return "kernel-start", last_line  # no cell began: the kernel never came up (or papermill could not start)
    return "error", _cell_error(nb) or last_line


# papermill's command line, run as `python -c _DIE_WITH_RUNNER RUNNER_PID ARGS...`: on Linux the
# process asks the kernel for SIGKILL when the runner's thread that started it ends (the runner
# killed by SIGKILL included), then runs papermill with ARGS.
_DIE_WITH_RUNNER = """
import ctypes, os, runpy, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
except (AttributeError, OSError):  # no prctl (not Linux): the kernel still watches the runner
    pass
if os.getppid() != int(sys.argv[1]):  # the runner died before prctl
    sys.exit(1)
sys.argv = ["papermill", *sys.argv[2:]]
runpy.run_module("papermill", run_name="__main__", alter_sys=True)
"""
_RUNNING: set[subprocess.Popen] = set()  # papermill processes of this runner
_RUNNING_LOCK = threading.Lock()
_STOPPING = threading.Event()  # set on SIGTERM/SIGINT: no new papermill starts


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # papermill's group; its kernel follows (cell.watch_runner)
    except ProcessLookupError:
        pass


@contextmanager
def _stopping_jobs_on_signals():
    """While the block runs, SIGTERM and SIGINT kill every running job's process group, then end
    the runner (SystemExit 128 + signal; KeyboardInterrupt for SIGINT) once its jobs have cleaned up."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield
        return

    def stop(signum, frame):
        with _RUNNING_LOCK:
            _STOPPING.set()
            for proc in _RUNNING:
                _kill_group(proc)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _STOPPING.clear()


def _cell_error(nb: dict) -> str | None:
    """'In [7]: ValueError: ...' for the first error output of the notebook, if any."""
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":  # on one line: it goes into the summary table
                evalue = " / ".join(line.strip() for line in str(out.get("evalue")).splitlines() if line.strip())
                return f"In [{cell.get('execution_count')}]: {out.get('ename')}: {evalue}"
    return None


# ----------------------------------------------------------------------------- backends
def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="jobs", unit="job", dynamic_ncols=True)


def _report(bar, result: JobResult) -> None:
    line = f"{result.status:<7} {result.name}  {result.seconds:.1f} s"
    bar.write(line + (f"  ({result.reason})" if result.reason else ""))
    bar.update(1)


def run_local(
    jobs,
    *,
    workers: int,
    cpus: int,
    gpus: list[str] | None = None,
    retries: int = KERNEL_START_RETRIES,
    wait_lock: bool = False,
) -> list[JobResult]:
    """Run jobs on a pool of `workers` threads, each waiting on its papermill process.

    A job starts when a worker is free, its `cpu_slots` fit in the free CPU slots and, with `gpus`,
    a GPU is free. Jobs start in plan order (the first that does not fit waits for room).
    """
    results, queue, running = [], deque(jobs), {}
    free_gpus = list(gpus) if gpus is not None else None
    used = 0
    with _progress(len(jobs)) as bar, ThreadPoolExecutor(max_workers=workers) as pool:
        while queue or running:
            while (
                queue
                and len(running) < workers
                and used + cpu_slots(queue[0], cpus) <= cpus
                and (free_gpus is None or free_gpus)
            ):
                job = queue.popleft()
                gpu = free_gpus.pop(0) if free_gpus is not None else None
                running[pool.submit(run_job, job, retries=retries, gpu=gpu, wait_lock=wait_lock)] = (job, gpu)
                used += cpu_slots(job, cpus)
            bar.set_postfix_str(", ".join(job.name for job, _ in running.values()), refresh=True)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job, gpu = running.pop(future)
                used -= cpu_slots(job, cpus)
                if gpu is not None:
                    free_gpus.append(gpu)
                try:
                    results.append(future.result())
                except Exception as e:  # a bug or a full disk in run_job: fail this job, not the plan
                    results.append(JobResult(job.name, "failed", f"the runner: {type(e).__name__}: {e}"))
                _report(bar, results[-1])
    return results


def run_ray(
    jobs,
    *,
    address: str,
    cpus: int | None = None,
    retries: int = KERNEL_START_RETRIES,
    wait_lock: bool = False,
    memory: float | None = None,
    system_retries: int | None = None,
) -> list[JobResult]:
    """Run jobs as Ray tasks: `threads` CPUs each, one GPU where the job's device is CUDA, and
    `memory` GiB of Ray's memory resource (default RAY_JOB_MEMORY_GIB; 0: none), so that a node
    starts no more jobs than its memory holds.

    Connects with ``ray.init(address=...)`` unless this process already has Ray initialised
    (then that cluster is used and left running); "local" starts a cluster of `cpus` CPUs here, on
    which a job with more threads asks for all of them (`cpu_slots`: it runs alone).

    Before any job starts, `check_cluster` refuses (`RayClusterError`) a job that no node can hold
    and a node that does not see the repository, the data, the store and the executed root at the
    driver's paths. A task whose worker process or node dies is retried by Ray up to
    `system_retries` times (default RAY_SYSTEM_RETRIES): safe, since a job skips its complete
    replicas and resumes the others from their checkpoints. A job that fails in its notebook is a
    result, never retried (only a kernel that did not start is, `retries` times, inside the task).
    A job whose hardware label is the derived one gets the label of the worker that trains it
    (`ray_job`); its result says which, and on which node.
    """
    memory = RAY_JOB_MEMORY_GIB if memory is None else memory
    system_retries = RAY_SYSTEM_RETRIES if system_retries is None else system_retries
    if problems := [e for e in (ray_memory_error(memory), ray_retries_error(system_retries)) if e]:
        raise ValueError("; ".join(problems))  # before Ray starts
    import ray

    from . import plan as plan_mod

    started_here = not ray.is_initialized()
    if started_here:
        # A new local cluster gets exactly --cpus CPUs; an existing cluster keeps its own resources.
        local = {"num_cpus": cpus, "include_dashboard": False} if address == "local" else {}
        ray.init(address=address, log_to_driver=False, **local)
    results = []
    try:
        requests = {
            job.name: ray_resources(job, cpus=cpus if address == "local" else None, memory=memory) for job in jobs
        }
        check_cluster(jobs, requests)
        # Ray retries a task whose worker or node died (a system failure); an exception it raised, never.
        task = ray.remote(max_retries=system_retries, retry_exceptions=False)(ray_job)
        refs = {
            task.options(**requests[job.name], name=job.name).remote(
                job, retries=retries, wait_lock=wait_lock, derive_label=plan_mod.derives_hardware(job)
            ): job
            for job in jobs
        }
        with _progress(len(jobs)) as bar:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                job = refs.pop(ready[0])
                try:
                    results.append(ray.get(ready[0]))
                except ray.exceptions.RayError as e:  # retries spent: the worker died again, the node was lost, ...
                    results.append(JobResult(job.name, "failed", f"Ray: {type(e).__name__}: {str(e)[:300]}"))
                _report(bar, results[-1])
    finally:
        if started_here:
            ray.shutdown()
    return results


def ray_schedule(
    pending, *, address: str, cpus: int | None = None, memory: float | None = None, system_retries: int | None = None
) -> str:
    """The dry run's lines for Ray: what the pending jobs ask of the cluster, what is retried, and
    which jobs get the hardware label of the GPU that trains them (`ray_job`)."""
    from . import plan as plan_mod

    memory = RAY_JOB_MEMORY_GIB if memory is None else memory
    system_retries = RAY_SYSTEM_RETRIES if system_retries is None else system_retries
    local_cpus = cpus if address == "local" else None
    asks: dict[str, int] = {}
    for job in pending:
        need = _resources_text(ray_resources(job, cpus=local_cpus, memory=memory))
        asks[need] = asks.get(need, 0) + 1
    lines = [f"on Ray: {n} job(s) ask for {need} each" for need, n in asks.items()]
    lines.append(
        f"a job whose worker or node dies is retried up to {system_retries} times (--ray-retries); "
        "a job that fails in its notebook is not"
    )
    if derived := sum(job.uses_gpu and plan_mod.derives_hardware(job) for job in pending):
        lines.append(
            f"{derived} CUDA job(s) get the hardware label of the GPU that trains them, derived on its worker "
            f"(listed above with this machine's label, or {plan_mod.PLACEHOLDER_LABEL!r} where it has no CUDA)"
        )
    return "\n".join(lines)


RAY_JOB_MEMORY_GIB = 4.0  # GiB of Ray's memory resource per job (--ray-memory): a reservation, not a limit
RAY_SYSTEM_RETRIES = 3  # extra tries of a Ray task whose worker or node died (--ray-retries)
NODE_CHECK_TIMEOUT = 120.0  # seconds for every node to answer the start-up check
LABEL_TIMEOUT = 300.0  # seconds for a worker to read its GPU's name (a first CUDA start can be slow)
GIB = 2**30


class RayClusterError(RuntimeError):
    """What the Ray cluster cannot run, found before any job started; `problems` lists each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("the Ray cluster cannot run these jobs; none was started:\n  " + "\n  ".join(problems))


_RAY_MEMORY_RULE = "a number of GiB, 0 (no reservation) or more"
_RAY_RETRIES_RULE = "a whole number of extra tries, 0 or more"


def ray_memory_error(value) -> str | None:
    """Why `value` is no --ray-memory (GiB per job, 0 for no reservation); None when it is one."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return f"--ray-memory must be {_RAY_MEMORY_RULE}, got {value!r}"
    return None


def ray_retries_error(value) -> str | None:
    """Why `value` is no --ray-retries (extra tries after a system failure); None when it is one."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return f"--ray-retries must be {_RAY_RETRIES_RULE}, got {value!r}"
    return None


def _option_type(convert, error, rule: str):
    """An argparse type: the text converted, refused (quoting the text) where `error` refuses it."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = text
        if error(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        return value

    return parse


def ray_resources(job, *, cpus: int | None, memory: float) -> dict:
    """The Ray task options of `job`'s resources: its threads as CPUs (on a cluster of `cpus` CPUs
    started here, at most all of them: `cpu_slots`), a GPU where its device is CUDA, `memory` GiB."""
    request = {"num_cpus": cpu_slots(job, cpus) if cpus else job.threads, "num_gpus": 1 if job.uses_gpu else 0}
    if memory:
        request["memory"] = int(memory * GIB)
    return request


_RAY_RESOURCE_NAMES = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}  # option -> node resource


def _fits(node: dict, request: dict) -> bool:
    return all(node["Resources"].get(_RAY_RESOURCE_NAMES[k], 0) >= v for k, v in request.items())


def _resources_text(resources: dict) -> str:
    """'2 CPU, 1 GPU, 4 GiB of memory' for task options or a node's resources (by Ray's names)."""
    amounts = {_RAY_RESOURCE_NAMES.get(k, k): v for k, v in resources.items()}
    parts = [f"{amounts.get(r, 0):g} {r}" for r in ("CPU", "GPU")]
    return ", ".join([*parts, f"{amounts.get('memory', 0) / GIB:g} GiB of memory"])


def _node_text(node: dict) -> str:
    return f"node {node['NodeManagerAddress']} ({node['NodeManagerHostname']})"


def _jobs_text(names: list[str]) -> str:
    return f"job {names[0]}" if len(names) == 1 else f"{len(names)} jobs ({names[0]}, ...)"


def check_cluster(jobs, requests: dict[str, dict], timeout: float = NODE_CHECK_TIMEOUT) -> None:
    """Raise `RayClusterError`, before any job starts, for what the cluster cannot run:

    * a job whose resources (`requests`: job name -> task options) no alive node has: Ray would
      keep it pending forever;
    * a node that can hold one of the jobs but does not see, at the driver's paths, the repository
      (the jobs' working directory and the training notebook, byte for byte), the nnrandomness
      package, the store and the executed notebooks' root (a check file the driver writes there
      must show: the same shared file system, not an empty folder of the same name), each data root
      the plan gives and each dataset's files, or lacks a CPU capability the plan asks for.

    A cluster on a shared file system is what the runner expects (no Ray ``runtime_env``: the store
    must be shared anyway). One message per problem, naming the node and the path.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    unfit: dict[str, list[str]] = {}
    for job in jobs:
        if not any(_fits(n, requests[job.name]) for n in nodes):
            unfit.setdefault(_resources_text(requests[job.name]), []).append(job.name)
    if unfit:
        have = "; ".join(f"{_node_text(n)}: {_resources_text(n['Resources'])}" for n in nodes)
        raise RayClusterError(
            [f"{_jobs_text(names)} ask(s) for {need}, more than any node has ({have})" for need, names in unfit.items()]
        )
    expected, markers = _node_expectations(jobs)
    problems = []
    try:
        check = ray.remote(num_cpus=0, max_retries=0)(node_problems)
        refs = {
            check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                expected
            ): n
            for n in nodes
            if any(_fits(n, r) for r in requests.values())  # a node that runs no job need not see anything
        }
        ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
        for ref in ready:
            try:
                found = ray.get(ref)
            except ray.exceptions.RayError as e:  # e.g. the node cannot import nnrandomness
                found = [f"the check failed: {type(e).__name__}: {str(e)[:300]}"]
            problems += [f"{_node_text(refs[ref])}: {p}" for p in found]
        problems += [f"{_node_text(refs[ref])}: did not answer the start-up check in {timeout:.0f} s" for ref in late]
    finally:
        for marker in markers:
            marker.unlink(missing_ok=True)
    if problems:
        raise RayClusterError(problems)


_MARKER_PREFIX = ".nnrandomness-ray-check-"


def _node_expectations(jobs) -> tuple[dict, list[Path]]:
    """What every node must see (for `node_problems`), and the check files written for it."""
    import hashlib
    import uuid

    paths = [("the repository (the jobs' working directory)", str(cwd), "dir", None) for cwd in {j.cwd for j in jobs}]
    paths += [
        ("the training notebook", str(nb), "sha256", hashlib.sha256(nb.read_bytes()).hexdigest())
        for nb in {j.notebook for j in jobs}
    ]
    roots = [("the store", j.output_root) for j in jobs] + [("the executed root", j.executed.parents[3]) for j in jobs]
    name, markers = f"{_MARKER_PREFIX}{os.getpid()}-{uuid.uuid4().hex}", []
    for what, root in dict.fromkeys(roots):
        try:
            root.mkdir(parents=True, exist_ok=True)
            (root / name).write_text("written by the runner's driver; removed after its start-up check\n")
        except OSError as e:
            for marker in markers:
                marker.unlink(missing_ok=True)
            raise RayClusterError(
                [f"the driver cannot write its check file into {what} {root}: {e.strerror or e}"]
            ) from None
        markers.append(root / name)
        paths.append((what, str(root), "marker", name))
    data = {(j.dataset, str(j.cwd / j.parameters["data_root"]) if j.parameters["data_root"] else None) for j in jobs}
    paths += [(f"the data root of the {d} jobs", root, "dir", None) for d, root in sorted(data, key=str) if root]
    expected = {
        "paths": paths,
        "package": str(Path(__file__).resolve().parent),
        "datasets": sorted(data, key=str),
        "cpu_capabilities": sorted({j.cpu_capability for j in jobs}),
    }
    return expected, markers


def node_problems(expected: dict) -> list[str]:
    """Run on a node by `check_cluster`: what of `expected` (`_node_expectations`) this node does not
    see, one message per path, naming it."""
    import hashlib

    from . import data, environment

    problems = []
    for what, path, kind, value in expected["paths"]:
        where = Path(path)
        try:
            if kind in ("dir", "marker") and not where.is_dir():
                problems.append(f"{what} {path} does not exist here (no such directory)")
            elif kind == "marker" and not (where / value).is_file():
                problems.append(
                    f"{what} {path} is not the driver's: its check file {value} is missing (not the same shared "
                    "file system)"
                )
            elif kind == "sha256" and not where.is_file():
                problems.append(f"{what} {path} does not exist here (no such file)")
            elif kind == "sha256" and hashlib.sha256(where.read_bytes()).hexdigest() != value:
                problems.append(f"{what} {path} differs from the driver's (another checkout at the same path?)")
        except OSError as e:
            problems.append(f"{what} {path}: {e.strerror or e}")
    if (package := str(Path(__file__).resolve().parent)) != expected["package"]:
        problems.append(f"nnrandomness is imported from {package}, on the driver from {expected['package']}")
    for dataset, root in expected["datasets"]:
        try:
            data.check_dataset(dataset, root)
        except (FileNotFoundError, ValueError) as e:
            problems.append(str(e))
    problems += [e for c in expected["cpu_capabilities"] if (e := environment.unsupported_cpu_capability_error(c))]
    return problems


def ray_job(job, *, retries: int = KERNEL_START_RETRIES, wait_lock: bool = False, derive_label: bool = False):
    """The body of a Ray task, on its worker: `run_job`, under the hardware label this machine
    derives for the job (`worker_hardware`) when `derive_label`. The result keeps the plan's job
    name; its reason says under which label and where the job ran ('as cuda-nvidia-h200 on node
    10.0.0.7 (gpu7)'). A job relabelled into replicas complete in the store is skipped."""
    import dataclasses

    import ray

    from . import plan as plan_mod

    started, name = time.monotonic(), job.name
    node_id = ray.get_runtime_context().get_node_id()
    here = next((_node_text(n) for n in ray.nodes() if n["NodeID"] == node_id), f"node {node_id}")
    if derive_label:
        label, problem = worker_hardware(job)
        if problem:
            return JobResult(name, "failed", f"on {here}: {problem}", time.monotonic() - started)
        if label != job.hardware:
            job = plan_mod.relabelled(job, label)
            missing, conflicts = store_state(job)
            if conflicts:
                return JobResult(name, "failed", f"as {label} on {here}: {'; '.join(conflicts)}")
            if not missing:
                return JobResult(name, "skipped", f"complete in the store as {label}", time.monotonic() - started)
    result = run_job(job, retries=retries, wait_lock=wait_lock)
    reason = "; ".join(filter(None, [result.reason, f"as {job.hardware} on {here}"]))
    return dataclasses.replace(result, name=name, reason=reason)


_DERIVE_LABEL = "import json, sys; from nnrandomness import params; print(params.hardware(json.loads(sys.argv[1])))"


def worker_hardware(job) -> tuple[str, str | None]:
    """(the hardware label this machine derives for `job`, as `params.hardware` does, or ''; a problem or None).

    A CUDA job's label names the GPU Ray gave the task: it is read in a child process with the
    job's environment (CUDA_VISIBLE_DEVICES as Ray set it), so that the worker, which Ray reuses
    for tasks on other GPUs, holds no CUDA context (torch reads the visible devices once per process).
    """
    import json

    from . import params

    values = {**job.parameters, "hardware": ""}
    if not job.uses_gpu:  # a CPU label is device, threads and capability: nothing of the machine
        return params.hardware(values), None
    cmd = [sys.executable, "-c", _DERIVE_LABEL, json.dumps(values)]
    try:
        proc = subprocess.run(cmd, env=job_environment(job), capture_output=True, text=True, timeout=LABEL_TIMEOUT)
    except subprocess.TimeoutExpired:
        return "", f"reading the GPU's name for the hardware label took more than {LABEL_TIMEOUT:.0f} s"
    lines = [line for line in (proc.stdout if proc.returncode == 0 else proc.stderr).splitlines() if line.strip()]
    if proc.returncode != 0:
        return "", f"cannot derive the hardware label here: {lines[-1] if lines else 'no output'}"
    return lines[-1].strip(), None


# ----------------------------------------------------------------------------- summary
def _print_summary(results: list[JobResult], seconds: float) -> None:
    width = max([len(r.name) for r in results] + [3])
    print(f"\n{'job':<{width}}  status   seconds  tries  reason")
    for r in results:
        print(f"{r.name:<{width}}  {r.status:<7}  {r.seconds:>7.1f}  {r.attempts:>5}  {r.reason}")
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    print(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed in {seconds:.0f} s")
