"""The cost of determinism: training-step time under named backend configurations.

One *step* is forward + loss + backward + Adam update on a fixed synthetic batch. For each
model and workload (image size, batch size, device, precision, threads), every configuration
in `CONFIGURATIONS` is timed against the same `baseline` (non-deterministic kernels, cuDNN
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
  the sweep records the op (``unsupported_op``) and goes on.

Results are tidy rows (`sweep` returns a DataFrame; each row carries its effective flags as JSON
in ``flags``) written per hardware label to ``<root>/overhead/<hardware>/results.parquet`` with
``manifest.json`` (environment fingerprint, plan, configuration descriptions, the SHA-256 of the
Parquet file) written last by atomic rename. ``nnrandomness overhead --notebook`` runs the same
sweep by executing notebooks/overhead_run.ipynb with papermill per hardware label (`run_notebook`),
keeping the executed notebook under ``<root>/executed/overhead/<hardware>.ipynb``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from . import environment, models, noise, store, train

# ----------------------------------------------------------------------------- configurations
BASELINE = "baseline"
DEVICE_TYPES = ("cpu", "cuda")


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
    device_types: tuple[str, ...] = DEVICE_TYPES  # where the knobs change anything at all

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
        Configuration(BASELINE, "non-deterministic kernels, cuDNN autotuning on (the paper's fast setting)",
                      cudnn_benchmark=True),
        Configuration("det_full", "use_deterministic_algorithms(True), cuDNN deterministic, benchmark off, "
                      "uninitialised memory NaN-filled (torch's default under the flag)", deterministic=True),
        Configuration("det_no_fill", "det_full without filling uninitialised memory "
                      "(torch.utils.deterministic.fill_uninitialized_memory = False)",
                      deterministic=True, fill_uninitialized_memory=False),
        Configuration("cudnn_det_only", "cuDNN deterministic and benchmark off, torch's flag off",
                      cudnn_benchmark=False, cudnn_deterministic=True, device_types=("cuda",)),
        Configuration("benchmark_off_only", "cuDNN autotuning off, nothing else", cudnn_benchmark=False,
                      device_types=("cuda",)),
        Configuration("workspace", "baseline with CUBLAS_WORKSPACE_CONFIG=':4096:8' (timed in a child process)",
                      cudnn_benchmark=True, cublas_workspace_config=":4096:8", device_types=("cuda",)),
        Configuration("tf32", "baseline with TF32 matmul and convolution", cudnn_benchmark=True, precision="tf32",
                      device_types=("cuda",)),
        Configuration("bf16", "baseline under bf16 autocast", cudnn_benchmark=True, precision="bf16"),
        Configuration("compile", "baseline with the model under torch.compile", cudnn_benchmark=True, compile=True),
        Configuration("det_compile", "det_full with the model under torch.compile (Inductor autotuning off)",
                      deterministic=True, compile=True),
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
        for name, minimum in (("image_size", 1), ("batch_size", 1), ("num_classes", 2), ("steps", 1),
                              ("warmup", 0), ("repeats", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if torch.device(self.device).type not in DEVICE_TYPES:
            raise ValueError(f"unknown device {self.device!r}; valid device types: {', '.join(DEVICE_TYPES)}")
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


ModelFactory = Callable[[int, int, torch.Generator], torch.nn.Module]  # (classes, channels, init gen)


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

    results = {n: {"status": "ok", "times_ms": [], "record": None, "unsupported_op": None, "error": None}
               for n in names}
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
                res.update(status="unsupported" if op else "error", unsupported_op=op,
                           error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if compiled is not None:
        torch._dynamo.reset()  # its caches hold the model: free it before the next one
    return results


# ----------------------------------------------------------------------------- rows
ROW_COLUMNS = [
    "model", "image_size", "batch_size", "num_classes", "device", "hardware", "threads", "precision",
    "configuration", "status", "n_steps", "repeats", "steps_per_repeat", "warmup_steps", "median_ms", "q1_ms",
    "q3_ms", "overhead_pct", "same_process", "unsupported_op", "error", "flags",
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
            None, os.environ.get("CUBLAS_WORKSPACE_CONFIG")
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
            "model": workload.model, "image_size": workload.image_size, "batch_size": workload.batch_size,
            "num_classes": workload.num_classes, "device": str(device), "hardware": workload.hardware,
            "threads": threads, "precision": workload.precision, "configuration": n, "repeats": workload.repeats,
            "steps_per_repeat": workload.steps, "warmup_steps": workload.warmup, "same_process": n not in child,
            "n_steps": 0, "median_ms": np.nan, "q1_ms": np.nan, "q3_ms": np.nan, "overhead_pct": np.nan,
            "unsupported_op": None, "error": None, "flags": None,
        }
        if n in not_applicable:
            row["status"] = "not_applicable"
            row["error"] = f"not applicable: {n} only changes anything on {', '.join(CONFIGURATIONS[n].device_types)}"
        else:
            res = results[n]
            row.update(status=res["status"], unsupported_op=res["unsupported_op"], error=res["error"],
                       flags=json.dumps(res["record"], sort_keys=True, default=str) if res["record"] else None)
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
        proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"overhead child process failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        return json.loads((Path(tmp) / "results.json").read_text())


def _run_child_job(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    results = time_configurations(Workload(**job["workload"]), job["configurations"])
    (Path(job_path).parent / "results.json").write_text(json.dumps(results, default=str))
    return 0


# ----------------------------------------------------------------------------- the sweep
@dataclass
class Plan:
    """What a sweep runs on one device type: the tiny defaults here, the study's in plans/overhead.yaml."""

    models: tuple[str, ...] = ("smallcnn",)
    configurations: tuple[str, ...] = (BASELINE, "det_full", "det_no_fill")
    image_size: int = 32
    image_size_per_model: dict = dataclasses.field(default_factory=dict)  # model -> side (e.g. inception_v3: 75)
    batch_size: int = 8
    num_classes: int = 1000
    precisions: tuple[str, ...] = ("fp32",)
    threads: tuple[int | None, ...] = (1,)
    steps: int = 3
    warmup: int = 1
    repeats: int = 2
    seed: int = 0

    def workloads(self, device: str) -> list[Workload]:
        """Every (model, threads, precision) workload, models outermost, each validated."""
        for name in self.models:
            models.check_model(name)
        for name in self.configurations:
            check_configuration(name)
        out = []
        for name in self.models:
            for threads in self.threads:
                for precision in self.precisions:
                    w = Workload(name, self.image_size_per_model.get(name, self.image_size), self.batch_size,
                                 self.num_classes, device, precision, threads, self.steps, self.warmup, self.repeats,
                                 self.seed)
                    w.validate()
                    out.append(w)
        return out


def load_plan(path: str | Path, device_type: str) -> Plan:
    """The `devices.<device_type>` section of an overhead plan, with the top-level `models`."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text()) or {}
    sections = raw.get("devices", {})
    if device_type not in sections:
        raise ValueError(f"plan {path} has no section devices.{device_type}; it has: {', '.join(sections) or 'none'}")
    section = {**{k: v for k, v in raw.items() if k != "devices"}, **sections[device_type]}
    valid = {f.name for f in dataclasses.fields(Plan)}
    unknown = set(section) - valid
    if unknown:
        raise ValueError(f"plan {path}: unknown key(s) {sorted(unknown)}; valid keys: {', '.join(sorted(valid))}")
    for key in ("models", "configurations", "precisions", "threads"):
        if key in section:
            section[key] = tuple(section[key])
    return Plan(**section)


def sweep(plan: Plan, device: str = "cpu", *, progress: bool = True) -> pd.DataFrame:
    """Every workload of `plan` on `device` x its configurations: a tidy frame of `ROW_COLUMNS`."""
    workloads = plan.workloads(device)  # validates everything before any timing
    by_model: dict[str, list[Workload]] = {}
    for w in workloads:
        by_model.setdefault(w.model, []).append(w)
    bar = by_model.items()
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(bar, total=len(by_model), desc="overhead", unit="model")
    rows = []
    for name, ws in bar:
        if progress:
            bar.set_postfix_str(name)
        for w in ws:
            rows += measure(w, list(plan.configurations))
    return pd.DataFrame(rows, columns=ROW_COLUMNS)


# ----------------------------------------------------------------------------- the store
RESULTS, MANIFEST = "results.parquet", "manifest.json"


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
        tmp = d / f"{MANIFEST}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
        os.replace(tmp, d / MANIFEST)
        out.append(d)
    return out


def read_results(root: str | Path, hardware: str) -> tuple[pd.DataFrame, dict]:
    """(rows, manifest) of one hardware label; ValueError when incomplete or damaged."""
    d = results_dir(root, hardware)
    if not (d / MANIFEST).exists():
        raise ValueError(f"{d}: no manifest (missing or interrupted overhead run)")
    manifest = json.loads((d / MANIFEST).read_text())
    if store.sha256_file(d / RESULTS) != manifest["files"][RESULTS]:
        raise ValueError(f"{d / RESULTS} fails its SHA-256 checksum")
    return pd.read_parquet(d / RESULTS), manifest


# ----------------------------------------------------------------------------- the notebook
# notebooks/overhead_run.ipynb runs one sweep per hardware label with papermill (`run_notebook`,
# `nnrandomness overhead --notebook`). Its cell tagged `parameters` defines exactly these names:
# a Plan's fields with one precision and one thread count (one hardware label per notebook), plus
# the device, the label and the run store.
NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "overhead_run.ipynb"
NOTEBOOK_PARAMETERS = ("device", "hardware", "models", "configurations", "image_size", "image_size_per_model",
                       "batch_size", "num_classes", "steps", "warmup", "repeats", "threads", "precision", "seed",
                       "output_root")


def notebook_plan(values: dict, *, unknown=()) -> Plan:
    """The Plan of the overhead notebook's parameters, every value checked; ValueError names each problem.

    unknown: other names the notebook found (papermill only warns when it injects a name the
    notebook does not define).
    """
    errors = []  # the values' problems; unknown names are reported with them, not instead of them
    errors += [f"missing parameter {n!r}" for n in NOTEBOOK_PARAMETERS if n not in values]
    for name in ("models", "configurations"):
        v = values.get(name)
        if not isinstance(v, (list, tuple)) or not v or not all(isinstance(s, str) for s in v):
            errors.append(f"{name} must be a non-empty list of names, got {v!r}")
    for name in ("image_size", "batch_size", "num_classes", "steps", "warmup", "repeats", "seed"):
        v = values.get(name)
        if isinstance(v, bool) or not isinstance(v, int):
            errors.append(f"{name} must be an integer, got {v!r}")
    for name in ("device", "hardware", "precision", "output_root"):
        if not isinstance(values.get(name), str):
            errors.append(f"{name} must be a string, got {values.get(name)!r}")
    if not isinstance(values.get("image_size_per_model", {}), dict):
        errors.append(f"image_size_per_model must be a mapping model -> pixels, got {values['image_size_per_model']!r}")
    if not errors:  # every value has its type: check them together
        plan = Plan(models=tuple(values["models"]), configurations=tuple(values["configurations"]),
                    image_size=values["image_size"], image_size_per_model=dict(values["image_size_per_model"]),
                    batch_size=values["batch_size"], num_classes=values["num_classes"],
                    precisions=(values["precision"],), threads=(values["threads"],), steps=values["steps"],
                    warmup=values["warmup"], repeats=values["repeats"], seed=values["seed"])
        try:
            plan.workloads(values["device"])  # models, sizes, configurations, device, threads, precision
        except (ValueError, RuntimeError) as e:
            errors.append(str(e))
    if unknown:
        errors.insert(0, f"unknown parameter(s) {', '.join(map(repr, sorted(unknown)))}: papermill injected it or "
                         f"a parameter is misspelt; valid parameters: {', '.join(NOTEBOOK_PARAMETERS)}")
    if errors:
        raise ValueError("invalid notebook parameters:\n  " + "\n  ".join(errors))
    return plan


def notebook_parameters(plan: Plan, device: str, threads: int | None, precision: str, root: str | Path) -> dict:
    """The notebook's parameters for one (threads, precision) of `plan`: plain YAML-able values."""
    return {
        "device": device, "hardware": environment.hardware_label(device, threads), "models": list(plan.models),
        "configurations": list(plan.configurations), "image_size": plan.image_size,
        "image_size_per_model": dict(plan.image_size_per_model), "batch_size": plan.batch_size,
        "num_classes": plan.num_classes, "steps": plan.steps, "warmup": plan.warmup, "repeats": plan.repeats,
        "threads": threads, "precision": precision, "seed": plan.seed, "output_root": str(Path(root).resolve()),
    }


def executed_path(root: str | Path, hardware: str) -> Path:
    return Path(root) / "executed" / "overhead" / f"{hardware}.ipynb"


def run_notebook(parameters: dict, *, notebook: str | Path = NOTEBOOK, timeout: float | None = None) -> Path:
    """Execute the overhead notebook with papermill (a real kernel) and keep it, failed or not.

    The executed copy goes to `executed_path(output_root, hardware)` without papermill's timings
    and paths (`batch.write_executed`). Returns that path; a failing cell raises papermill's
    PapermillExecutionError after the copy is kept.
    """
    import papermill

    from . import batch

    target = executed_path(parameters["output_root"], parameters["hardware"])
    notebook = Path(notebook)
    with tempfile.TemporaryDirectory(prefix="overhead-notebook-") as tmp:
        out = Path(tmp) / notebook.name
        try:
            papermill.execute_notebook(str(notebook), str(out), parameters=parameters, cwd=str(notebook.parent),
                                       progress_bar=False, start_timeout=batch.START_TIMEOUT,
                                       **({"execution_timeout": timeout} if timeout else {}))
        finally:
            if (nb := batch._read_notebook(out)) is not None:
                batch.write_executed(nb, target)
    return target


# ----------------------------------------------------------------------------- CLI
def _names(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _threads(text: str) -> tuple[int | None, ...]:
    return tuple(None if s in ("none", "null") else int(s) for s in _names(text))


# flag -> (Plan field, parser); None defaults mean "from the plan, else Plan's default".
_OVERRIDES = {
    "models": ("models", _names),
    "configurations": ("configurations", _names),
    "image_size": ("image_size", int),
    "batch_size": ("batch_size", int),
    "num_classes": ("num_classes", int),
    "precisions": ("precisions", _names),
    "threads": ("threads", _threads),
    "steps": ("steps", int),
    "warmup": ("warmup", int),
    "repeats": ("repeats", int),
    "seed": ("seed", int),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plan", help="an overhead plan (e.g. plans/overhead.yaml); flags override its values")
    parser.add_argument("--device", default="cpu", help="device to time on (default cpu); picks the plan's section")
    parser.add_argument("--models", help=f"comma-separated model names; valid: {', '.join(models.MODELS)}")
    parser.add_argument("--configurations", help=f"comma-separated; valid: {', '.join(CONFIGURATIONS)}")
    parser.add_argument("--image-size", help="square input side in pixels")
    parser.add_argument("--batch-size", help="examples per step")
    parser.add_argument("--num-classes", help="classes of the synthetic task (default 1000)")
    parser.add_argument("--precisions",
                        help=f"comma-separated baseline precisions; valid: {', '.join(noise.PRECISIONS)}")
    parser.add_argument("--threads", help="comma-separated intra-op thread counts ('none': leave torch's)")
    parser.add_argument("--steps", help="timed steps per block")
    parser.add_argument("--warmup", help="untimed steps at the start of every block")
    parser.add_argument("--repeats", help="interleaved blocks per configuration")
    parser.add_argument("--seed", help="init and synthetic-batch seed")
    parser.add_argument("--root", default="data/runs", help="run store root (default data/runs)")
    parser.add_argument("--no-write", action="store_true", help="print the results, write nothing")
    parser.add_argument("--notebook", action="store_true",
                        help="run the sweep by executing notebooks/overhead_run.ipynb with papermill, once per "
                             "thread count; results and <root>/executed/overhead/<hardware>.ipynb go under --root")
    parser.add_argument("--child-job", help=argparse.SUPPRESS)  # internal: see time_in_child


def plan_from_args(args: argparse.Namespace) -> Plan:
    plan = load_plan(args.plan, torch.device(args.device).type) if args.plan else Plan()
    changes = {}
    for flag, (field_name, parse) in _OVERRIDES.items():
        text = getattr(args, flag)
        if text is not None:
            try:
                changes[field_name] = parse(text)
            except ValueError:
                raise ValueError(f"--{flag.replace('_', '-')}: cannot parse {text!r}") from None
    return dataclasses.replace(plan, **changes)


def main(args: argparse.Namespace) -> int:
    if args.child_job:
        return _run_child_job(args.child_job)
    try:
        plan = plan_from_args(args)
        plan.workloads(args.device)  # every model, size and configuration checked before any timing
    except (ValueError, OSError) as e:
        print(f"nnrandomness overhead: error: {e}", file=sys.stderr)
        return 2
    if args.notebook:
        return _main_notebook(plan, args)
    # Wall and CPU time of the whole sweep: on a shared machine the CPU time (all threads of this
    # process) is the better guide to how long it takes on an idle one.
    t0, c0 = time.perf_counter(), time.process_time()
    frame = sweep(plan, args.device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    shown = frame[["model", "threads", "precision", "configuration", "status", "median_ms", "q1_ms", "q3_ms",
                   "overhead_pct", "unsupported_op"]]
    with pd.option_context("display.max_rows", None, "display.width", 200):
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(f"{len(frame)} rows in {wall:.0f} s wall, {cpu:.0f} s CPU")
    if not args.no_write:
        for d in write_results(frame, args.root, plan=plan):
            print(f"written to {d}")
    return 0


def _main_notebook(plan: Plan, args: argparse.Namespace) -> int:
    """`--notebook`: one papermill execution per thread count (each its own hardware label).
    0: all written; 1: a notebook failed (its executed copy is kept); 2: invalid options."""
    from papermill.exceptions import PapermillExecutionError

    if args.no_write:
        print("nnrandomness overhead: error: --notebook always writes (use --root for a scratch store)", file=sys.stderr)
        return 2
    if len(plan.precisions) != 1:
        print(f"nnrandomness overhead: error: --notebook runs one precision per hardware label, got "
              f"{list(plan.precisions)}; pick one with --precisions", file=sys.stderr)
        return 2
    failed = 0
    for threads in plan.threads:
        params = notebook_parameters(plan, args.device, threads, plan.precisions[0], args.root)
        target = executed_path(params["output_root"], params["hardware"])
        try:
            run_notebook(params)
        except PapermillExecutionError as e:
            failed += 1
            print(f"failed  {params['hardware']}: {e.ename}: {e.evalue}; executed notebook: {target}", file=sys.stderr)
        else:
            print(f"done    {params['hardware']}: {results_dir(params['output_root'], params['hardware'])}; "
                  f"executed notebook: {target}")
    return 1 if failed else 0
