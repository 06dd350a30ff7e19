"""GPU smoke check: what a GPU host must show before the paper plan or the overhead study runs there.

Run by ``benchmarks/gpu_smoke.sh`` (which sets the environment) on a host with a CUDA device, from
the repository root; it is sized to finish in under 8 minutes on one GPU. Its steps (``STEPS``):

* ``requires_gpu_tests``: the test suite's ``requires_gpu`` tests (pytest -m requires_gpu);
* ``paper_like_plan``: a tiny paper-like plan (SmallCNN on CIFAR-10 files in the real
  "python version" format that this script writes, settings CONTROL and IMPL) run twice by
  ``nnrandomness run --gpus``, into two stores;
* ``control_across_processes``: every CONTROL replica bit-identical (weights hash) across the two
  runs, i.e. across processes, and within each;
* ``impl_kernels``: the IMPL replicas' recorded GPU kernels (the manifest's ``kernels_hash`` or
  ``kernels``, "not recorded" where the trainer records none) and whether their weights differ;
* ``overhead_subset``: ``nnrandomness overhead`` on SmallCNN, ResNet-18 and VGG16 at 224 px
  (baseline, det_full, benchmark_off_only, each block in a fresh process);
* ``jobs_per_gpu``: four SmallCNN jobs on one GPU, ``--jobs-per-gpu 1`` against ``--jobs-per-gpu 4``.

It writes a summary JSON (``SUMMARY_SCHEMA``) under ``--out`` and prints its path; exit status 0
when every step passed, 1 otherwise, 2 for invalid options. ``--cpu-dry`` runs what a CPU can
check (the options, the CIFAR files read back by the project's loader, both plans validated by a
dry run of the runner, the summary's schema) and marks the GPU steps "skipped", so that a test on
the CPU (tests/test_overhead.py) keeps this script from rotting.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

STEPS = (
    "requires_gpu_tests",
    "paper_like_plan",
    "control_across_processes",
    "impl_kernels",
    "overhead_subset",
    "jobs_per_gpu",
)
STATUSES = ("ok", "failed", "skipped")
# The summary: key -> type (a dict for a nested mapping's keys). Every step has an entry in "steps".
SUMMARY_SCHEMA = {
    "schema_version": int,
    "mode": str,  # "gpu" or "cpu-dry"
    "started": str,  # UTC, ISO 8601
    "seconds": float,
    "host": str,
    "gpu": (str, type(None)),
    "torch": str,
    "passed": bool,
    "steps": dict,  # step -> {"status": one of STATUSES, "seconds": float, "detail": ...}
}
SCHEMA_VERSION = 1
REPO = Path(__file__).resolve().parents[1]
OVERHEAD_MODELS = ("smallcnn", "resnet18", "vgg16")
OVERHEAD_CONFIGURATIONS = ("baseline", "det_full", "benchmark_off_only")


# ----------------------------------------------------------------------------- options
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpu_smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", default="0", help="the GPU id to use (one GPU; default 0)")
    parser.add_argument("--out", type=Path, default=Path("data/scratch/gpu-smoke"), help="where the summary goes")
    parser.add_argument("--skip", default="", help=f"comma-separated steps to skip; steps: {', '.join(STEPS)}")
    parser.add_argument("--jobs-per-gpu", type=int, default=4, help="jobs sharing the GPU in jobs_per_gpu (>= 2)")
    parser.add_argument("--cpu-dry", action="store_true", help="check on a CPU what can be checked there")
    args = parser.parse_args(argv)
    skip = [s.strip() for s in args.skip.split(",") if s.strip()]
    if unknown := [s for s in skip if s not in STEPS]:
        parser.error(f"--skip: unknown step(s) {', '.join(map(repr, unknown))}; valid steps: {', '.join(STEPS)}")
    if not args.gpu.isdigit():
        parser.error(f"--gpu must be one GPU id (0, 1, ...), got {args.gpu!r}")
    if args.jobs_per_gpu < 2:
        parser.error(f"--jobs-per-gpu must be at least 2 (compared with 1), got {args.jobs_per_gpu}")
    args.skip = tuple(skip)
    return args


def summary_problems(summary) -> list[str]:
    """Why `summary` does not have the shape of SUMMARY_SCHEMA (empty when it does)."""
    if not isinstance(summary, dict):
        return [f"the summary is a {type(summary).__name__}, not a mapping"]
    problems = [f"missing key {k!r}" for k in SUMMARY_SCHEMA if k not in summary]
    problems += [
        f"{k!r} is {type(summary[k]).__name__}, not {getattr(t, '__name__', t)}"
        for k, t in SUMMARY_SCHEMA.items()
        if k in summary and not isinstance(summary[k], t)
    ]
    steps = summary.get("steps") if isinstance(summary.get("steps"), dict) else {}
    problems += [f"step {s!r} missing" for s in STEPS if s not in steps]
    for name, step in steps.items():
        if (
            not isinstance(step, dict)
            or step.get("status") not in STATUSES
            or not isinstance(step.get("seconds"), float)
        ):
            problems.append(f"step {name!r} needs a status in {STATUSES} and seconds, got {step!r}")
    return problems


# ----------------------------------------------------------------------------- data and plans
def write_cifar10(root: Path, n_train: int = 2000, n_test: int = 500, seed: int = 0) -> Path:
    """CIFAR-10's python version (pickled batches, bytes keys, uint8 rows of 3 x 32 x 32) under
    `root`/cifar-10-batches-py, with a learnable signal: each class has its own mean colour."""
    rng = np.random.default_rng(seed)
    where = root / "cifar-10-batches-py"
    where.mkdir(parents=True, exist_ok=True)
    colours = rng.integers(40, 216, size=(10, 3))

    def batch(n):
        labels = rng.integers(0, 10, size=n)
        pixels = colours[labels][:, :, None] + rng.normal(0, 40, size=(n, 3, 1024))
        return {b"data": np.clip(pixels, 0, 255).astype(np.uint8).reshape(n, 3072), b"labels": labels.tolist()}

    per_batch = n_train // 5
    for i in range(1, 6):
        (where / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per_batch)))
    (where / "test_batch").write_bytes(pickle.dumps(batch(n_test)))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (where / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    return where


def write_plan(
    path: Path, data_root: Path, settings: list[str], *, replicas: int, epochs: int, hardware: str | None = None
) -> Path:
    """A paper-like plan: SmallCNN on CIFAR-10 with the paper's Adam recipe, on CUDA. `hardware`: the
    label to give where no GPU can name it (a dry run on a CPU)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"""# Written by benchmarks/gpu_smoke.py: a paper-like plan small enough for a smoke check.
name: gpu-smoke
notebook: {REPO / "notebooks" / "10_training.ipynb"}
output_root: {path.parent / "runs"}
executed_root: {path.parent / "executed"}
timeout: 600
defaults:
  replicas: {replicas}
  epochs: {epochs}
  batch_size: 128
  lr: 0.0004
  lr_milestones: []
  dropout: 0.0
  augment: false
  base_seed: 0
  device: cuda
  threads: 2
  precision: fp32
  eval_batch_size: 500
  data_root: {data_root}
{f"  hardware: {hardware}" if hardware else ""}
cells:
  - datasets: [cifar10]
    models: [smallcnn]
    settings: [{", ".join(settings)}]
"""
    )
    return path


def run_plan(plan: Path, store: Path, gpu: str, *extra: str, dry: bool = False) -> dict:
    """`nnrandomness run` of `plan` into `store` on GPU `gpu`: return code, seconds, the output's tail."""
    argv = ["run", str(plan), "--gpus", gpu, *extra]
    argv += ["--output-root", str(store / "runs"), "--executed-root", str(store / "executed"), "--allow-dirty"]
    t0 = time.perf_counter()
    if dry:  # in this process: a dry run starts no job, and an interpreter less is seconds less
        import contextlib
        import io

        from nnrandomness import cli

        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = cli.main([*argv, "--dry-run"])
        text = out.getvalue()
    else:
        proc = subprocess.run(
            [sys.executable, "-m", "nnrandomness", *argv], capture_output=True, text=True, check=False
        )
        code, text = proc.returncode, proc.stdout + proc.stderr
    return {"returncode": code, "seconds": round(time.perf_counter() - t0, 1), "output": text[-1500:]}


def manifests(store: Path) -> list[dict]:
    """Every complete replica's manifest under a run store, by setting and replica."""
    found = [json.loads(p.read_text()) for p in sorted((store / "runs").glob("**/replica-*/manifest.json"))]
    return sorted(found, key=lambda m: (m["spec"]["setting"], m["spec"]["replica"]))


# ----------------------------------------------------------------------------- the checks
def control_check(first: list[dict], second: list[dict]) -> dict:
    """CONTROL replicas' weights hashes: all equal within each run and between the two runs."""
    hashes = [[m["weights_hash"] for m in ms if m["spec"]["setting"] == "CONTROL"] for ms in (first, second)]
    identical = bool(hashes[0]) and len(hashes[0]) == len(hashes[1]) and len(set(hashes[0] + hashes[1])) == 1
    return {
        "replicas_per_run": len(hashes[0]),
        "bit_identical": identical,
        "weights_hashes": sorted(set(sum(hashes, []))),
    }


def impl_check(runs: list[dict]) -> dict:
    """IMPL replicas: distinct weights, and the GPU kernels each recorded ("not recorded" when none)."""
    impl = [m for m in runs if m["spec"]["setting"] == "IMPL"]
    kernels = [
        m.get("kernels_hash") or (json.dumps(m["kernels"], sort_keys=True) if m.get("kernels") else None) for m in impl
    ]
    recorded = [k for k in kernels if k]
    distinct_weights = len({m["weights_hash"] for m in impl})
    return {
        "replicas": len(impl),
        "distinct_weights": distinct_weights,
        "kernels": f"{len(set(recorded))} distinct kernel set(s) over {len(recorded)} replicas"
        if recorded
        else "not recorded",
        "warning": "every IMPL replica is bit-identical" if impl and distinct_weights == 1 else None,
    }


def overhead_subset(root: Path, gpu: str, *, dry: bool = False) -> dict:
    cmd = [sys.executable, "-m", "nnrandomness", "overhead", "--device", "cuda"]
    cmd += ["--models", ",".join(OVERHEAD_MODELS), "--configurations", ",".join(OVERHEAD_CONFIGURATIONS)]
    cmd += ["--image-size", "224", "--batch-size", "32", "--num-classes", "1000", "--threads", "none"]
    cmd += ["--steps", "5", "--warmup", "3", "--repeats", "2", "--root", str(root)]
    if dry:
        return {"command": cmd}
    proc = subprocess.run(
        cmd, capture_output=True, text=True, check=False, env={**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
    )
    out = {"returncode": proc.returncode, "output": (proc.stdout + proc.stderr)[-1500:], "rows": []}
    if proc.returncode == 0:
        import pandas as pd

        frames = [pd.read_parquet(p) for p in sorted(root.glob("overhead/*/results.parquet"))]
        keep = ["model", "configuration", "status", "median_ms", "kernel_ms", "overhead_pct", "kernel_overhead_pct"]
        keep += ["peak_device_mb", "processes", "unsupported_op", "model_changes"]
        rows = pd.concat(frames)[keep]
        out["rows"] = json.loads(rows.to_json(orient="records"))
    return out


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not args.cpu_dry and not torch.cuda.is_available():
        print(
            "gpu_smoke: error: no CUDA device here (torch.cuda.is_available() is False); use --cpu-dry", file=sys.stderr
        )
        return 2
    started = datetime.datetime.now(datetime.UTC)
    t_start = time.perf_counter()
    work = args.out.resolve() / started.strftime("%Y%m%dT%H%M%SZ")
    work.mkdir(parents=True, exist_ok=True)
    steps: dict[str, dict] = {}
    state: dict = {}

    def step(name, function, *, gpu_only=True):
        t0 = time.perf_counter()
        if name in args.skip or (gpu_only and args.cpu_dry):
            steps[name] = {
                "status": "skipped",
                "seconds": 0.0,
                "detail": "--skip" if name in args.skip else "--cpu-dry",
            }
            return
        try:
            ok, detail = function()
        except Exception as e:  # a broken step is reported, and the others still run
            ok, detail = False, f"{type(e).__name__}: {e}"
        steps[name] = {
            "status": "ok" if ok else "failed",
            "seconds": round(time.perf_counter() - t0, 1),
            "detail": detail,
        }
        print(f"{steps[name]['status']:7} {name} ({steps[name]['seconds']} s)", flush=True)

    data_root = work / "datasets"
    write_cifar10(data_root)
    label = "cuda-cpu-dry" if args.cpu_dry else None  # no GPU to name the hardware
    plans = {
        "paper": write_plan(
            work / "paper" / "plan.yaml", data_root, ["CONTROL", "IMPL"], replicas=2, epochs=2, hardware=label
        ),
        "jobs": write_plan(
            work / "jobs" / "plan.yaml",
            data_root,
            ["ALGO+IMPL", "ALGO", "IMPL", "CONTROL"],
            replicas=1,
            epochs=3,
            hardware=label,
        ),
    }

    def requires_gpu_tests():
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "requires_gpu",
            "-p",
            "no:cacheprovider",
            "-q",
            str(REPO / "tests"),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO)
        return proc.returncode == 0, proc.stdout.strip().splitlines()[-1:] or proc.stderr[-500:]

    def paper_like_plan():
        state["runs"] = [run_plan(plans["paper"], work / "paper" / f"store-{i}", args.gpu) for i in (1, 2)]
        return all(r["returncode"] == 0 for r in state["runs"]), state["runs"]

    def control_across_processes():
        detail = control_check(*(manifests(work / "paper" / f"store-{i}") for i in (1, 2)))
        return detail["bit_identical"], detail

    def impl_kernels():
        detail = impl_check(manifests(work / "paper" / "store-1"))
        return detail["replicas"] > 0, detail

    def overhead():
        detail = overhead_subset(work / "overhead", args.gpu)
        vgg = [r for r in detail["rows"] if r["model"] == "vgg16" and r["configuration"] == "det_full"]
        return detail["returncode"] == 0 and bool(vgg) and vgg[0]["status"] == "ok", detail

    def jobs_per_gpu():
        one = run_plan(plans["jobs"], work / "jobs" / "store-1", args.gpu, "--jobs-per-gpu", "1")
        many = run_plan(plans["jobs"], work / "jobs" / "store-n", args.gpu, "--jobs-per-gpu", str(args.jobs_per_gpu))
        detail = {"jobs_per_gpu_1": one, f"jobs_per_gpu_{args.jobs_per_gpu}": many}
        detail["speedup"] = round(one["seconds"] / many["seconds"], 2) if many["seconds"] else None
        return one["returncode"] == many["returncode"] == 0, detail

    def cpu_checks():
        # The files read back by the project's loader, and both plans through the runner's dry run.
        from nnrandomness import data

        ds = data.load_dataset("cifar10", data_root)
        dry = {
            k: run_plan(p, work / k / "store-dry", args.gpu, "--jobs-per-gpu", str(args.jobs_per_gpu), dry=True)
            for k, p in plans.items()
        }
        detail = {"cifar10_train": int(len(ds.y_train)), "cifar10_test": int(len(ds.y_test)), "dry_runs": dry}
        detail["overhead_command"] = " ".join(overhead_subset(work / "overhead", args.gpu, dry=True)["command"][1:])
        return all(r["returncode"] == 0 for r in dry.values()), detail

    step("requires_gpu_tests", requires_gpu_tests)
    step("paper_like_plan", paper_like_plan)
    step("control_across_processes", control_across_processes)
    step("impl_kernels", impl_kernels)
    step("overhead_subset", overhead)
    step("jobs_per_gpu", jobs_per_gpu)
    if args.cpu_dry:
        step("cpu_checks", cpu_checks, gpu_only=False)
    summary = {
        "schema_version": SCHEMA_VERSION,
        "mode": "cpu-dry" if args.cpu_dry else "gpu",
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t_start, 1),
        "host": platform.node(),
        "gpu": torch.cuda.get_device_name(int(args.gpu)) if not args.cpu_dry else None,
        "torch": torch.__version__,
        "passed": all(s["status"] != "failed" for s in steps.values()),
        "steps": steps,
    }
    if problems := summary_problems(summary):  # the schema the CPU test checks: never write another
        raise AssertionError(f"summary does not follow SUMMARY_SCHEMA: {problems}")
    path = work / "summary.json"
    path.write_text(json.dumps(summary, indent=1, default=str))
    print(f"summary: {path}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
