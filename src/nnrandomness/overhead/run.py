"""`nnrandomness overhead`: the sweep from the command line, or through the overhead notebook.

Without ``--notebook`` the sweep runs in this process and its rows are printed and written to the
overhead store (`results.write_results`, under ``--root``, default `results.DEFAULT_ROOT`). With
``--notebook`` it runs by executing the overhead notebook (``--notebook-path``, default
notebooks/overhead_run.ipynb) with papermill once per thread count, keeping the executed notebook
under ``<root>/executed/overhead/<hardware>.ipynb`` (`run_notebook`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from .. import environment, executed, models, noise, params
from .results import DEFAULT_ROOT, results_dir, write_results
from .sweeps import Plan, load_plan, sweep
from .timing import CONFIGURATIONS

# ----------------------------------------------------------------------------- the notebook
# The overhead notebook runs one sweep per hardware label with papermill (`run_notebook`,
# `nnrandomness overhead --notebook`). Its cell tagged `parameters` defines exactly these names:
# a Plan's fields with one precision and one thread count (one hardware label per notebook), plus
# the device, the label and the overhead store's root.
# Where it is, relative to the working directory (the repository root, as for a plan's `notebook:`);
# `--notebook-path` and `run_notebook(notebook=...)` take another.
NOTEBOOK = Path("notebooks") / "overhead_run.ipynb"
NOTEBOOK_PARAMETERS = (
    "device",
    "hardware",
    "models",
    "configurations",
    "image_size",
    "image_size_per_model",
    "batch_size",
    "num_classes",
    "steps",
    "warmup",
    "repeats",
    "threads",
    "precision",
    "seed",
    "output_root",
)


def notebook_plan_from(namespace) -> Plan:
    """The Plan of the overhead notebook's parameters read from its namespace (`globals()`).

    Names holding plain data that are no parameter were injected by papermill (which only warns)
    or misspelt: refused with the values' problems (the rule of `params.unknown_names`, which also
    lets the check re-run after "Run all").
    """
    values = {n: namespace[n] for n in NOTEBOOK_PARAMETERS if n in namespace}
    return notebook_plan(values, unknown=params.unknown_names(namespace, NOTEBOOK_PARAMETERS))


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
        plan = Plan(
            models=tuple(values["models"]),
            configurations=tuple(values["configurations"]),
            image_size=values["image_size"],
            image_size_per_model=dict(values["image_size_per_model"]),
            batch_size=values["batch_size"],
            num_classes=values["num_classes"],
            precisions=(values["precision"],),
            threads=(values["threads"],),
            steps=values["steps"],
            warmup=values["warmup"],
            repeats=values["repeats"],
            seed=values["seed"],
        )
        try:
            plan.workloads(values["device"])  # models, sizes, configurations, device, threads, precision
        except (ValueError, RuntimeError) as e:
            errors.append(str(e))
    if unknown:
        errors.insert(
            0,
            f"unknown parameter(s) {', '.join(map(repr, sorted(unknown)))}: papermill injected it or "
            f"a parameter is misspelt; valid parameters: {', '.join(NOTEBOOK_PARAMETERS)}",
        )
    if errors:
        raise ValueError("invalid notebook parameters:\n  " + "\n  ".join(errors))
    return plan


def notebook_parameters(plan: Plan, device: str, threads: int | None, precision: str, root: str | Path) -> dict:
    """The notebook's parameters for one (threads, precision) of `plan`: plain YAML-able values."""
    return {
        "device": device,
        "hardware": environment.hardware_label(device, threads),
        "models": list(plan.models),
        "configurations": list(plan.configurations),
        "image_size": plan.image_size,
        "image_size_per_model": dict(plan.image_size_per_model),
        "batch_size": plan.batch_size,
        "num_classes": plan.num_classes,
        "steps": plan.steps,
        "warmup": plan.warmup,
        "repeats": plan.repeats,
        "threads": threads,
        "precision": precision,
        "seed": plan.seed,
        "output_root": str(Path(root).resolve()),
    }


def executed_path(root: str | Path, hardware: str) -> Path:
    return Path(root) / "executed" / "overhead" / f"{hardware}.ipynb"


def run_notebook(parameters: dict, *, notebook: str | Path = NOTEBOOK, timeout: float | None = None) -> Path:
    """Execute the overhead notebook with papermill (a real kernel) and keep it, failed or not.

    The executed copy goes to `executed_path(output_root, hardware)` without papermill's timings
    and paths (`executed.keep`). Returns that path; a failing cell raises papermill's
    PapermillExecutionError after the copy is kept.
    """
    import papermill

    target = executed_path(parameters["output_root"], parameters["hardware"])
    notebook = Path(notebook)
    with tempfile.TemporaryDirectory(prefix="overhead-notebook-") as tmp:
        out = Path(tmp) / notebook.name
        try:
            papermill.execute_notebook(
                str(notebook),
                str(out),
                parameters=parameters,
                cwd=str(notebook.parent),
                progress_bar=False,
                start_timeout=executed.START_TIMEOUT,
                **({"execution_timeout": timeout} if timeout else {}),
            )
        finally:
            executed.keep(out, target)
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
    parser.add_argument(
        "--precisions", help=f"comma-separated baseline precisions; valid: {', '.join(noise.PRECISIONS)}"
    )
    parser.add_argument("--threads", help="comma-separated intra-op thread counts ('none': leave torch's)")
    parser.add_argument("--steps", help="timed steps per block")
    parser.add_argument("--warmup", help="untimed steps at the start of every block")
    parser.add_argument("--repeats", help="interleaved blocks per configuration")
    parser.add_argument("--seed", help="init and synthetic-batch seed")
    parser.add_argument(
        "--root",
        default=DEFAULT_ROOT,
        help=f"overhead store root: sweeps go to <root>/overhead/<hardware>/ (default {DEFAULT_ROOT}, "
        "where the cost chapter reads them)",
    )
    parser.add_argument("--no-write", action="store_true", help="print the results, write nothing")
    parser.add_argument(
        "--notebook",
        action="store_true",
        help="run the sweep by executing the overhead notebook with papermill, once per "
        "thread count; results and <root>/executed/overhead/<hardware>.ipynb go under --root",
    )
    parser.add_argument(
        "--notebook-path",
        type=Path,
        default=NOTEBOOK,
        help=f"the overhead notebook that --notebook executes (default {NOTEBOOK}, relative to the working directory)",
    )


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
    shown = frame[
        [
            "model",
            "threads",
            "precision",
            "configuration",
            "status",
            "median_ms",
            "q1_ms",
            "q3_ms",
            "overhead_pct",
            "unsupported_op",
        ]
    ]
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
        print(
            "nnrandomness overhead: error: --notebook always writes (use --root for a scratch store)", file=sys.stderr
        )
        return 2
    if len(plan.precisions) != 1:
        print(
            f"nnrandomness overhead: error: --notebook runs one precision per hardware label, got "
            f"{list(plan.precisions)}; pick one with --precisions",
            file=sys.stderr,
        )
        return 2
    if not args.notebook_path.is_file():
        print(
            f"nnrandomness overhead: error: no overhead notebook at {args.notebook_path} (run from the repository "
            "root, or pass --notebook-path)",
            file=sys.stderr,
        )
        return 2
    failed = 0
    for threads in plan.threads:
        params = notebook_parameters(plan, args.device, threads, plan.precisions[0], args.root)
        target = executed_path(params["output_root"], params["hardware"])
        try:
            run_notebook(params, notebook=args.notebook_path)
        except PapermillExecutionError as e:
            failed += 1
            print(f"failed  {params['hardware']}: {e.ename}: {e.evalue}; executed notebook: {target}", file=sys.stderr)
        else:
            print(
                f"done    {params['hardware']}: {results_dir(params['output_root'], params['hardware'])}; "
                f"executed notebook: {target}"
            )
    return 1 if failed else 0
