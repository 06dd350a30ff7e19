"""Timing one training step under named backend configurations, each in fresh processes.

One *step* is forward + loss + backward + Adam update on a fixed synthetic batch. For one model
and workload (image size, batch size, device, precision, threads), every configuration in
`CONFIGURATIONS` is timed against the `baseline` (non-deterministic kernels, cuDNN autotuning on),
which is timed the same way:

* every *block* (one configuration, `warmup` untimed steps, then `steps` timed steps) runs in a
  fresh process (`time_block` in a child of a fork server that imported torch but never started
  CUDA): its own cuDNN autotune cache, cuBLAS handles, allocator and compile caches. Two
  configurations timed in one process would share autotuned plans (cuDNN's cache key does not
  include the benchmark flag), so ``benchmark_off_only`` would reuse the baseline's choices, and
  CUBLAS_WORKSPACE_CONFIG is read when CUDA starts: here each child sets its configuration's
  value before CUDA starts, so ``workspace`` is timed like every other configuration;
* blocks are interleaved between configurations (baseline, det_full, ..., baseline, det_full,
  ...; `repeats` rounds) so that slow drift (clocks, heat, other load) hits all alike;
* autotuning, torch.compile and allocator growth happen in the warm-up steps; then each timed step
  is timed on its own: CUDA events (`torch.cuda.Event(enable_timing=True)`, synchronised once per
  block) on a GPU, `time.perf_counter` on the CPU;
* after the timed steps the same number of steps runs under `torch.profiler` and the durations of
  the GPU kernels are summed (`kernel_time`; the paper summed kernel times with nvprof): this
  leaves out launch gaps and host work that step wall time includes. On the CPU the sum is the
  operators' own (self) CPU time;
* peak memory over the timed steps: `torch.cuda.max_memory_allocated` on a GPU, the process's peak
  resident set on the host (each block is its own process, so it is this configuration's);
* a configuration's time is the median over its repeats x steps step times, with the
  interquartile range; overhead % = (T_config / T_baseline - 1) x 100, for kernel time alike.

The configurations split deterministic mode into its parts (see `CONFIGURATIONS`). Flags are set
and recorded by `noise.configure_determinism`. Ops without a deterministic implementation raise a
RuntimeError under the deterministic flag; the block records the op (``unsupported_op``) and the
sweep goes on. Changes made to a model to make it deterministic-capable (VGG's pool, see
`models.KerasVGGPool`) are recorded in ``model_changes``; where ``det_compile`` ends otherwise
than ``det_full`` (status, or step times whose interquartile ranges do not overlap) its row says
so in ``note``.

`measure` gives one tidy row per configuration (`ROW_COLUMNS`; each row carries its effective
flags as JSON in ``flags``).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import pickle
import re
import sys
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
            "baseline with CUBLAS_WORKSPACE_CONFIG=':4096:8' (set in each fresh process before CUDA starts)",
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


# ----------------------------------------------------------------------------- one block
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


# Device activities that are copies or fills issued by the runtime, not kernels (kineto's names).
_NOT_KERNELS = ("gpu_memcpy", "gpu_memset")


def kernel_time(events, device_type: str) -> tuple[float, int]:
    """(total ms, distinct names) of the work in profiler events (`prof.events()`).

    On CUDA: the durations of the GPU kernels (device-side events, runtime copies and memsets
    left out), summed as nvprof's per-kernel totals are; kernels that overlap on several streams
    count each. On the CPU: the operators' self CPU time (each op's time minus its child ops'),
    summed: the time spent inside aten ops, without the Python between them.
    """
    from torch.autograd import DeviceType

    if device_type == "cuda":
        kernels = [
            e
            for e in events
            if e.device_type == DeviceType.CUDA and getattr(e, "activity_type", None) not in _NOT_KERNELS
        ]
        total_us = sum(e.time_range.end - e.time_range.start for e in kernels)
    else:
        kernels = [e for e in events if e.device_type == DeviceType.CPU and not e.is_async]
        total_us = sum(e.self_cpu_time_total for e in kernels)
    return total_us / 1e3, len({e.name for e in kernels})


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 to /dev/null: kineto's C++ log lines (profiler start/stop, 'no GPU') go there."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _profile_steps(step: Callable[[], None], n: int, device: torch.device) -> tuple[float, int]:
    """Run `step` n times under torch.profiler: (kernel ms per step, distinct kernels)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with _quiet_stderr(), profile(activities=activities) as prof:
        for _ in range(n):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    total_ms, names = kernel_time(prof.events(), device.type)
    return total_ms / n, names


def _reset_peak_host() -> None:
    """Restart the kernel's peak-RSS count of this process (Linux: /proc/self/clear_refs, "5");
    where that is not possible the peak includes what came before (the same for every block)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_host_mb() -> float:
    """This process's peak resident set in MiB (VmHWM on Linux, else getrusage's maxrss)."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024  # kB
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, kB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def model_changes(model: torch.nn.Module, x: torch.Tensor) -> str | None:
    """What was changed in `model` to make it deterministic-capable (`models.KerasVGGPool.CHANGE`), and
    whether the change applies at the input `x` (one no-grad forward of one example), else None."""
    pools = [m for m in model.modules() if isinstance(m, models.KerasVGGPool)]
    if not pools:
        return None
    shapes = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: shapes.append(tuple(args[0].shape))) for m in pools]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(x[:1])
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    kept = [s for s, m in zip(shapes, pools) if not m.is_identity(s)]
    if not kept:
        return f"{models.KerasVGGPool.CHANGE}: applied (7x7 feature map)"
    h, w = kept[0][-2:]
    return f"{models.KerasVGGPool.CHANGE}: not applied here, the pool enlarges a {h}x{w} feature map"


def time_block(
    workload: Workload, name: str, *, model_factory: ModelFactory | None = None, env: dict | None = None
) -> dict:
    """One block in this process: build the model, warm up, time `workload.steps` steps, profile as
    many, read the peak memory. Meant to run in a fresh process (`run_fresh`): `env` is applied to
    os.environ first (a None value removes the variable), before CUDA starts.

    Returns {"status": "ok" | "unsupported" | "error", "times_ms", "kernel_ms" (per step),
    "n_kernels", "peak_device_mb", "peak_host_mb", "record" (flags), "unsupported_op", "error",
    "model_changes", "pid"}. A RuntimeError (an op without a deterministic implementation, out of
    memory, a compile failure) is recorded, not raised.
    """
    for key, value in (env or {}).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    cfg = CONFIGURATIONS[name]
    device = torch.device(workload.device)
    g = torch.Generator().manual_seed(workload.seed)
    if model_factory is None:
        model = models.build_model(workload.model, workload.num_classes, 3, generator=g)
    else:
        model = model_factory(workload.num_classes, 3, g)
    x = torch.randn(workload.batch_size, 3, workload.image_size, workload.image_size, generator=g)
    y = torch.randint(0, workload.num_classes, (workload.batch_size,), generator=g)
    model, x, y = model.to(device).train(), x.to(device), y.to(device)
    result = {
        "status": "ok",
        "times_ms": [],
        "kernel_ms": None,
        "n_kernels": None,
        "peak_device_mb": None,
        "peak_host_mb": None,
        "record": None,
        "unsupported_op": None,
        "error": None,
        "model_changes": model_changes(model, x),
        "pid": os.getpid(),
    }
    # Torch's default Adam (for-loop on the CPU, foreach on CUDA) with the study's lr and eps; the
    # values do not change the time of a step.
    opt = torch.optim.Adam(model.parameters(), lr=4e-4, eps=1e-7)
    net = torch.compile(model) if cfg.compile else model
    precision = cfg.precision or workload.precision

    def step():
        with noise.autocast(device, precision):
            logits = net(x)
        loss = train.cross_entropy(logits, y)  # NLLLoss has no deterministic CUDA kernel
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    try:
        with apply_configuration(cfg, workload.precision, workload.threads) as record:
            result["record"] = record
            for _ in range(workload.warmup):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)  # the steady state: autotuning's trials excluded
            _reset_peak_host()
            result["times_ms"] = _time_steps(step, workload.steps, device)
            if device.type == "cuda":
                result["peak_device_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            result["peak_host_mb"] = _peak_host_mb()
            result["kernel_ms"], result["n_kernels"] = _profile_steps(step, workload.steps, device)
    except RuntimeError as e:
        op = unsupported_op(e)
        result.update(
            status="unsupported" if op else "error",
            times_ms=[],
            unsupported_op=op,
            error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
        )
    return result


# ----------------------------------------------------------------------------- fresh processes
# Children come from a fork server: a process started afresh (never a fork of the caller, which
# may have started CUDA or OpenMP threads) that imported torch and this module once; each child
# is a fork of it, so it starts in milliseconds with no CUDA context, no autotune cache and the
# backend flags at torch's defaults. torch._dynamo (imported by the optimizers on first use) and
# the profiler are imported there too: seconds per child otherwise.
_PRELOAD = ["torch", "torch._dynamo", "torch.profiler", __name__]


def _context():
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def run_fresh(function: Callable, *args, **kwargs):
    """`function(*args, **kwargs)` in a fresh process (one per call); its result, or its exception
    raised here. A child that dies without an answer (killed, a crash in C) raises RuntimeError.

    `function` and its arguments travel by pickle (module-level functions and classes). As with
    any multiprocessing start method but fork, a script that calls this at its top level needs an
    ``if __name__ == "__main__":`` guard (each child imports the script's module; ``python -m
    nnrandomness``, the console script and notebooks are fine)."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(max_workers=1, mp_context=_context()) as pool:
        try:
            return pool.submit(function, *args, **kwargs).result()
        except BrokenProcessPool as e:
            raise RuntimeError(f"the timing process died: {e}") from None


def _child_env(cfg: Configuration) -> dict:
    """The child's CUBLAS_WORKSPACE_CONFIG: the configuration's, else this process's (None: unset)."""
    return {"CUBLAS_WORKSPACE_CONFIG": cfg.cublas_workspace_config or os.environ.get("CUBLAS_WORKSPACE_CONFIG")}


def time_configurations(
    workload: Workload, names: list[str], *, model_factory: ModelFactory | None = None
) -> dict[str, dict]:
    """Time configurations `names` on one model, each block in a fresh process, blocks interleaved.

    `repeats` rounds; in each, one block per configuration in the order given. Returns name ->
    {"status", "blocks": [`time_block`'s result plus "round" and "order" (the block's place in the
    sweep)], ...}; a configuration that fails (unsupported op, out of memory, a dead process) is
    recorded and dropped from later rounds, the others go on.
    """
    if model_factory is not None:
        try:
            pickle.dumps(model_factory)
        except (pickle.PicklingError, AttributeError, TypeError) as e:
            raise ValueError(
                f"model_factory {model_factory!r} cannot be sent to a fresh process (define it at module level): {e}"
            ) from None
    results = {n: {"status": "ok", "blocks": []} for n in names}
    order = 0
    for round_ in range(workload.repeats):
        for name in names:
            if results[name]["status"] != "ok":
                continue
            cfg = CONFIGURATIONS[name]
            try:
                block = run_fresh(time_block, workload, name, model_factory=model_factory, env=_child_env(cfg))
            except RuntimeError as e:
                block = {"status": "error", "times_ms": [], "error": str(e), "unsupported_op": None, "pid": None}
            block.update(round=round_, order=order)
            order += 1
            results[name]["blocks"].append(block)
            results[name]["status"] = block["status"]
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
    # Added with fresh processes per block; sweeps written before have none (None when read).
    "processes",  # fresh processes the configuration was timed in (one per block)
    "kernel_ms",  # kernel time per step (median over blocks; see kernel_time)
    "kernel_overhead_pct",  # (kernel_ms / baseline's kernel_ms - 1) x 100
    "n_kernels",  # distinct kernels (CPU: operators) the profiled steps ran
    "peak_device_mb",  # peak of torch.cuda.max_memory_allocated over the timed steps (MiB); None on the CPU
    "peak_host_mb",  # peak resident set of the block's process (MiB), largest over blocks
    "model_changes",  # what was changed in the model to make it deterministic-capable, None if nothing
    "note",  # det_compile: where it ends otherwise than det_full
]
# Columns a sweep written before a column existed lacks (results.read_results fills them with None).
ADDED_COLUMNS = ROW_COLUMNS[ROW_COLUMNS.index("processes") :]


def _median(values) -> float:
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else np.nan


def compile_note(det_full: dict, det_compile: dict) -> str | None:
    """Where the ``det_compile`` row ends otherwise than the ``det_full`` row (rows as `measure` makes
    them): a different status, or step times whose interquartile ranges do not overlap; else None."""
    if det_full["status"] != det_compile["status"]:
        what = det_compile["unsupported_op"] or det_compile["error"] or ""
        return (
            f"det_compile {det_compile['status']}{f' ({what})' if what else ''} where det_full is {det_full['status']}"
            + (f" ({det_full['unsupported_op']})" if det_full["unsupported_op"] else "")
        )
    if det_full["status"] != "ok":
        return None
    if det_compile["q3_ms"] < det_full["q1_ms"] or det_compile["q1_ms"] > det_full["q3_ms"]:
        change = overhead_pct(det_compile["median_ms"], det_full["median_ms"])
        return f"det_compile's step {change:+.1f} % against det_full's (interquartile ranges apart)"
    return None


def rows_from_results(
    workload: Workload, names: list[str], results: dict[str, dict], not_applicable: list[str]
) -> list[dict]:
    """One row per configuration from `time_configurations`' results (`ROW_COLUMNS`)."""
    device = torch.device(workload.device)
    threads = workload.threads if workload.threads is not None else torch.get_num_threads()
    base = results.get(BASELINE, {"status": "missing", "blocks": []})
    base_ms = base_kernel = None
    if base["status"] == "ok":
        base_ms = summarize([t for b in base["blocks"] for t in b["times_ms"]])["median_ms"]
        base_kernel = _median([b.get("kernel_ms") for b in base["blocks"]])
    rows = []
    for n in names:
        row = dict.fromkeys(ROW_COLUMNS)
        row.update(
            model=workload.model,
            image_size=workload.image_size,
            batch_size=workload.batch_size,
            num_classes=workload.num_classes,
            device=str(device),
            hardware=workload.hardware,
            threads=threads,
            precision=workload.precision,
            configuration=n,
            repeats=workload.repeats,
            steps_per_repeat=workload.steps,
            warmup_steps=workload.warmup,
            same_process=False,  # each block in a process of its own, the baseline's too
            n_steps=0,
            processes=0,
        )
        for column in ("median_ms", "q1_ms", "q3_ms", "overhead_pct", "kernel_ms", "kernel_overhead_pct"):
            row[column] = np.nan
        if n in not_applicable:
            row["status"] = "not_applicable"
            row["error"] = f"not applicable: {n} only changes anything on {', '.join(CONFIGURATIONS[n].device_types)}"
        else:
            res = results[n]
            blocks = res["blocks"]
            last = blocks[-1]
            record = next((b["record"] for b in blocks if b.get("record")), None)
            row.update(
                status=res["status"],
                processes=len(blocks),
                unsupported_op=last.get("unsupported_op"),
                error=last.get("error"),
                flags=json.dumps(record, sort_keys=True, default=str) if record else None,
                model_changes=next((b["model_changes"] for b in blocks if b.get("model_changes")), None),
            )
            peaks = {c: [b[c] for b in blocks if b.get(c) is not None] for c in ("peak_device_mb", "peak_host_mb")}
            row.update({c: max(v) for c, v in peaks.items() if v})
            if res["status"] == "ok":
                row.update(summarize([t for b in blocks for t in b["times_ms"]]))
                row["kernel_ms"] = _median([b.get("kernel_ms") for b in blocks])
                row["n_kernels"] = max(b["n_kernels"] for b in blocks)
                if base_ms is not None:
                    row["overhead_pct"] = overhead_pct(row["median_ms"], base_ms)
                if base_kernel:
                    row["kernel_overhead_pct"] = overhead_pct(row["kernel_ms"], base_kernel)
        rows.append(row)
    by_name = {r["configuration"]: r for r in rows}
    if "det_full" in by_name and "det_compile" in by_name and by_name["det_compile"]["status"] != "not_applicable":
        by_name["det_compile"]["note"] = compile_note(by_name["det_full"], by_name["det_compile"])
    return rows


def measure(workload: Workload, names: list[str], *, model_factory: ModelFactory | None = None) -> list[dict]:
    """One row per configuration (the baseline is always timed and comes first) for one workload.

    Configurations whose knobs do nothing on this device type get a "not_applicable" row without
    timing. The others are timed by `time_configurations`, every block in a fresh process.
    """
    workload.validate()
    for n in names:
        check_configuration(n)
    names = [BASELINE] + [n for n in dict.fromkeys(names) if n != BASELINE]
    device_type = torch.device(workload.device).type
    not_applicable = [n for n in names if device_type not in CONFIGURATIONS[n].device_types]
    timed = [n for n in names if n not in not_applicable]
    results = time_configurations(workload, timed, model_factory=model_factory)
    return rows_from_results(workload, names, results, not_applicable)
