"""Timing one training step under named backend configurations.

One *step* is forward + loss + backward + Adam update on a fixed synthetic batch. For one model
and workload (image size, batch size, device, precision, threads), every configuration in
`CONFIGURATIONS` is timed against the same `baseline` (non-deterministic kernels, cuDNN
autotuning on) in the same process:

* blocks are interleaved between configurations (baseline, det_full, ..., baseline, det_full,
  ...; `repeats` rounds) so that slow drift (clocks, heat, other load) hits all alike;
* each block first runs `warmup` untimed steps (cuDNN autotuning, torch.compile and allocator
  growth happen there), then `steps` timed steps, each timed on its own: CUDA events
  (`torch.cuda.Event(enable_timing=True)`, synchronised once per block) on a GPU,
  `time.perf_counter` on the CPU;
* a configuration's time is the median over its repeats x steps step times, with the
  interquartile range; overhead % = (T_config / T_baseline - 1) x 100.

The configurations split deterministic mode into its parts (see `CONFIGURATIONS`). Flags are set
and recorded by `noise.configure_determinism`, which restores them afterwards. Two need care:

* ``workspace`` (CUBLAS_WORKSPACE_CONFIG) is read by cuBLAS when CUDA starts, so on a GPU it is
  timed in a child process started with the variable set, and compared with this process's
  baseline (``same_process`` is False on its rows: drift between the processes is not
  controlled). It only concerns cuBLAS, so on the CPU it is recorded as not applicable.
* ops without a deterministic implementation raise a RuntimeError under the deterministic flag;
  the timer records the op (``unsupported_op``) and goes on.

`measure` gives one tidy row per configuration (`ROW_COLUMNS`; each row carries its effective
flags as JSON in ``flags``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import environment, models, noise, params, train
from ..models import ModelFactory

# ----------------------------------------------------------------------------- configurations
BASELINE = "baseline"
# The device types the timer runs on, and so where a configuration's knobs may change anything
# (none acts on mps). Not train's list of the devices training accepts.
TIMED_DEVICE_TYPES = ("cpu", "cuda")


@dataclass(frozen=True)
class Configuration:
    """A named set of backend flags (a `noise.BackendConfig`) plus the compile switch.

    Fields left None follow `noise.configure_determinism`'s rules (cuDNN benchmark is the
    opposite of `deterministic`, the memory fill follows the flag, the precision is the run's).
    """

    name: str
    description: str
    deterministic: bool = False
    cudnn_benchmark: bool | None = None
    # noise.BackendConfig ties cudnn.deterministic to `deterministic`; this overrides it for the
    # one configuration that separates the two (applied and restored by `apply_configuration`).
    cudnn_deterministic: bool | None = None
    fill_uninitialized_memory: bool | None = None
    cublas_workspace_config: str | None = None
    precision: str | None = None  # None: the run's precision
    compile: bool = False  # torch.compile the model (the optimizer step stays eager)
    device_types: tuple[str, ...] = TIMED_DEVICE_TYPES  # where the knobs change anything at all

    def backend(self, precision: str, threads: int | None) -> noise.BackendConfig:
        return noise.BackendConfig(
            deterministic=self.deterministic,
            threads=threads,
            precision=self.precision or precision,
            fill_uninitialized_memory=self.fill_uninitialized_memory,
            cublas_workspace_config=self.cublas_workspace_config,
            cudnn_benchmark=self.cudnn_benchmark,
        )


CONFIGURATIONS: dict[str, Configuration] = {
    c.name: c
    for c in [
        Configuration(
            BASELINE, "non-deterministic kernels, cuDNN autotuning on (the paper's fast setting)", cudnn_benchmark=True
        ),
        Configuration(
            "det_full",
            "use_deterministic_algorithms(True), cuDNN deterministic, benchmark off, "
            "uninitialised memory NaN-filled (torch's default under the flag)",
            deterministic=True,
        ),
        Configuration(
            "det_no_fill",
            "det_full without filling uninitialised memory "
            "(torch.utils.deterministic.fill_uninitialized_memory = False)",
            deterministic=True,
            fill_uninitialized_memory=False,
        ),
        Configuration(
            "cudnn_det_only",
            "cuDNN deterministic and benchmark off, torch's flag off",
            cudnn_benchmark=False,
            cudnn_deterministic=True,
            device_types=("cuda",),
        ),
        Configuration(
            "benchmark_off_only", "cuDNN autotuning off, nothing else", cudnn_benchmark=False, device_types=("cuda",)
        ),
        Configuration(
            "workspace",
            "baseline with CUBLAS_WORKSPACE_CONFIG=':4096:8' (timed in a child process)",
            cudnn_benchmark=True,
            cublas_workspace_config=":4096:8",
            device_types=("cuda",),
        ),
        Configuration(
            "tf32",
            "baseline with TF32 matmul and convolution",
            cudnn_benchmark=True,
            precision="tf32",
            device_types=("cuda",),
        ),
        Configuration("bf16", "baseline under bf16 autocast", cudnn_benchmark=True, precision="bf16"),
        Configuration("compile", "baseline with the model under torch.compile", cudnn_benchmark=True, compile=True),
        Configuration(
            "det_compile",
            "det_full with the model under torch.compile (Inductor autotuning off)",
            deterministic=True,
            compile=True,
        ),
    ]
}


def check_configuration(name: str) -> Configuration:
    if name not in CONFIGURATIONS:
        raise ValueError(f"unknown configuration {name!r}; valid configurations: {', '.join(CONFIGURATIONS)}")
    return CONFIGURATIONS[name]


@contextlib.contextmanager
def apply_configuration(cfg: Configuration, precision: str = "fp32", threads: int | None = None):
    """Set `cfg`'s flags for the block; yield the record (requested and effective flags, compile).

    Everything is restored on exit (by `noise.configure_determinism`, and here for the cuDNN
    deterministic override).
    """
    with noise.configure_determinism(cfg.backend(precision, threads)) as record:
        before = torch.backends.cudnn.deterministic
        try:
            requested, effective = dict(record["requested"]), dict(record["effective"])
            if cfg.cudnn_deterministic is not None:
                torch.backends.cudnn.deterministic = cfg.cudnn_deterministic
                requested["cudnn_deterministic"] = cfg.cudnn_deterministic
                effective["cudnn_deterministic"] = torch.backends.cudnn.deterministic
            requested["compile"] = effective["compile"] = cfg.compile
            yield {"requested": requested, "effective": effective}
        finally:
            torch.backends.cudnn.deterministic = before


# ----------------------------------------------------------------------------- workloads
@dataclass(frozen=True)
class Workload:
    """What one model is timed on. The sizes of the study live in plans/overhead.yaml."""

    model: str
    image_size: int  # square input side, pixels
    batch_size: int  # examples per step
    num_classes: int = 1000  # the paper's ImageNet head
    device: str = "cpu"
    precision: str = "fp32"  # the baseline's precision (tf32/bf16 configurations set their own)
    threads: int | None = None  # intra-op threads; None leaves torch's current value
    steps: int = 20  # timed steps per block
    warmup: int = 5  # untimed steps at the start of every block
    repeats: int = 3  # blocks per configuration, interleaved between configurations
    seed: int = 0  # init and synthetic-batch seed

    def validate(self) -> None:
        models.check_input_size(self.model, self.image_size)
        for name, minimum in (
            ("image_size", 1),
            ("batch_size", 1),
            ("num_classes", 2),
            ("steps", 1),
            ("warmup", 0),
            ("repeats", 1),
            ("seed", 0),
        ):
            if e := params.integer_error(getattr(self, name), minimum):
                raise ValueError(f"{name} {e}")
        # noise.validate_backend leaves threads to params' rule (one check, see params).
        if self.threads is not None and (e := params.integer_error(self.threads, 1)):
            raise ValueError(f"threads {e}")
        if torch.device(self.device).type not in TIMED_DEVICE_TYPES:
            raise ValueError(f"unknown device {self.device!r}; valid device types: {', '.join(TIMED_DEVICE_TYPES)}")
        noise.validate_backend(noise.BackendConfig(deterministic=False, threads=self.threads, precision=self.precision))

    @property
    def hardware(self) -> str:
        return environment.hardware_label(self.device, self.threads)


# ----------------------------------------------------------------------------- statistics
def summarize(times_ms) -> dict:
    """n, median and quartiles (numpy's linear interpolation) of per-step times in ms."""
    t = np.asarray(times_ms, dtype=np.float64)
    if t.size == 0:
        raise ValueError("no step times to summarise")
    q1, median, q3 = np.percentile(t, [25, 50, 75])
    return {"n_steps": int(t.size), "median_ms": float(median), "q1_ms": float(q1), "q3_ms": float(q3)}


def overhead_pct(t_config: float, t_baseline: float) -> float:
    """(T_config / T_baseline - 1) x 100: the % by which a configuration is slower than the baseline."""
    return (t_config / t_baseline - 1.0) * 100.0


_NO_DETERMINISTIC_IMPL = re.compile(r"(\S+) does not have a deterministic implementation")


def unsupported_op(error: BaseException) -> str | None:
    """The op named by torch's "<op> does not have a deterministic implementation" error, else None."""
    m = _NO_DETERMINISTIC_IMPL.search(str(error))
    return m.group(1) if m else None


# ----------------------------------------------------------------------------- timing
def _time_steps(step: Callable[[], None], n: int, device: torch.device) -> list[float]:
    """Run `step` n times; the time of each in ms (CUDA events on a GPU, perf_counter on the CPU)."""
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        for start, end in events:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize(device)  # once per block: a sync per step would serialise launches
        return [start.elapsed_time(end) for start, end in events]
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def time_configurations(
    workload: Workload, names: list[str], *, model_factory: ModelFactory | None = None
) -> dict[str, dict]:
    """Time configurations `names` on one model in this process, blocks interleaved.

    Returns name -> {"status": "ok" | "unsupported" | "error", "times_ms": [...], "record": flags,
    "unsupported_op": str | None, "error": str | None}. A configuration that raises (an op
    without a deterministic implementation, out of memory, a compile failure) is recorded and
    dropped from later rounds; the others go on.
    """
    device = torch.device(workload.device)
    g = torch.Generator().manual_seed(workload.seed)
    if model_factory is None:
        model = models.build_model(workload.model, workload.num_classes, 3, generator=g)
    else:
        model = model_factory(workload.num_classes, 3, g)
    x = torch.randn(workload.batch_size, 3, workload.image_size, workload.image_size, generator=g)
    y = torch.randint(0, workload.num_classes, (workload.batch_size,), generator=g)
    model, x, y = model.to(device).train(), x.to(device), y.to(device)
    # Torch's default Adam (for-loop on the CPU, foreach on CUDA) with the study's lr and eps; the
    # values do not change the time of a step.
    opt = torch.optim.Adam(model.parameters(), lr=4e-4, eps=1e-7)
    compiled = None

    def make_step(net, precision):
        def step():
            with noise.autocast(device, precision):
                logits = net(x)
            loss = train.cross_entropy(logits, y)  # NLLLoss has no deterministic CUDA kernel
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    results = {
        n: {"status": "ok", "times_ms": [], "record": None, "unsupported_op": None, "error": None} for n in names
    }
    for _ in range(workload.repeats):
        for name in names:
            res = results[name]
            if res["status"] != "ok":
                continue
            cfg = CONFIGURATIONS[name]
            if cfg.compile and compiled is None:
                compiled = torch.compile(model)
            net = compiled if cfg.compile else model
            try:
                with apply_configuration(cfg, workload.precision, workload.threads) as record:
                    res["record"] = res["record"] or record
                    step = make_step(net, cfg.precision or workload.precision)
                    for _ in range(workload.warmup):
                        step()
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    res["times_ms"] += _time_steps(step, workload.steps, device)
            except RuntimeError as e:
                op = unsupported_op(e)
                res.update(
                    status="unsupported" if op else "error",
                    unsupported_op=op,
                    error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                )
    if compiled is not None:
        torch._dynamo.reset()  # its caches hold the model: free it before the next one
    return results


# ----------------------------------------------------------------------------- rows
ROW_COLUMNS = [
    "model",
    "image_size",
    "batch_size",
    "num_classes",
    "device",
    "hardware",
    "threads",
    "precision",
    "configuration",
    "status",
    "n_steps",
    "repeats",
    "steps_per_repeat",
    "warmup_steps",
    "median_ms",
    "q1_ms",
    "q3_ms",
    "overhead_pct",
    "same_process",
    "unsupported_op",
    "error",
    "flags",
]


def measure(workload: Workload, names: list[str], *, model_factory: ModelFactory | None = None) -> list[dict]:
    """One row per configuration (the baseline is always timed and included) for one workload.

    Configurations whose knobs do nothing on this device type get a "not_applicable" row without
    timing. On CUDA, a configuration that needs another CUBLAS_WORKSPACE_CONFIG than this
    process runs with is timed in a child process (see the module docstring).
    """
    workload.validate()
    for n in names:
        check_configuration(n)
    names = [BASELINE] + [n for n in dict.fromkeys(names) if n != BASELINE]
    device = torch.device(workload.device)
    here, child, not_applicable = [], [], []
    for n in names:
        cfg = CONFIGURATIONS[n]
        if device.type not in cfg.device_types:
            not_applicable.append(n)
        elif device.type == "cuda" and cfg.cublas_workspace_config not in (
            None,
            os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        ):
            child.append(n)
        else:
            here.append(n)
    if child and model_factory is not None:
        raise ValueError(f"configuration(s) {child} run in a child process, which cannot use a model_factory")
    results = time_configurations(workload, here, model_factory=model_factory)
    for n in child:
        env = {"CUBLAS_WORKSPACE_CONFIG": CONFIGURATIONS[n].cublas_workspace_config}
        results.update(time_in_child(workload, [n], env))

    base = results[BASELINE]
    base_median = summarize(base["times_ms"])["median_ms"] if base["status"] == "ok" else None
    threads = workload.threads if workload.threads is not None else torch.get_num_threads()
    rows = []
    for n in names:
        row = {
            "model": workload.model,
            "image_size": workload.image_size,
            "batch_size": workload.batch_size,
            "num_classes": workload.num_classes,
            "device": str(device),
            "hardware": workload.hardware,
            "threads": threads,
            "precision": workload.precision,
            "configuration": n,
            "repeats": workload.repeats,
            "steps_per_repeat": workload.steps,
            "warmup_steps": workload.warmup,
            "same_process": n not in child,
            "n_steps": 0,
            "median_ms": np.nan,
            "q1_ms": np.nan,
            "q3_ms": np.nan,
            "overhead_pct": np.nan,
            "unsupported_op": None,
            "error": None,
            "flags": None,
        }
        if n in not_applicable:
            row["status"] = "not_applicable"
            row["error"] = f"not applicable: {n} only changes anything on {', '.join(CONFIGURATIONS[n].device_types)}"
        else:
            res = results[n]
            row.update(
                status=res["status"],
                unsupported_op=res["unsupported_op"],
                error=res["error"],
                flags=json.dumps(res["record"], sort_keys=True, default=str) if res["record"] else None,
            )
            if res["times_ms"] and res["status"] == "ok":
                row.update(summarize(res["times_ms"]))
                if base_median is not None:
                    row["overhead_pct"] = overhead_pct(row["median_ms"], base_median)
        rows.append({c: row[c] for c in ROW_COLUMNS})
    return rows


def time_in_child(workload: Workload, names: list[str], env: dict[str, str]) -> dict[str, dict]:
    """`time_configurations` in a fresh Python process whose environment adds `env`.

    Used for CUBLAS_WORKSPACE_CONFIG, which cuBLAS reads when CUDA starts. The child is
    `nnrandomness overhead --child-job JOB` and writes its results next to JOB.
    """
    with tempfile.TemporaryDirectory(prefix="overhead-child-") as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"workload": dataclasses.asdict(workload), "configurations": names}))
        cmd = [sys.executable, "-m", "nnrandomness", "overhead", "--child-job", str(job)]
        proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"overhead child process failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        return json.loads((Path(tmp) / "results.json").read_text())


def run_child_job(job_path: str) -> int:
    """The child's side of `time_in_child`: time the job at `job_path`, write results.json beside it."""
    job = json.loads(Path(job_path).read_text())
    results = time_configurations(Workload(**job["workload"]), job["configurations"])
    (Path(job_path).parent / "results.json").write_text(json.dumps(results, default=str))
    return 0
