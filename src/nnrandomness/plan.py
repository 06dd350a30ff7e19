"""Plans: which cells of the study to run, as YAML data, expanded into papermill jobs.

A plan is data, read with `yaml.safe_load`; nothing in it is executed. It names the training
notebook, where results go, a recipe (`defaults`) and a list of `cells`, each a product of
datasets x models x settings with optional overrides of the recipe::

    name: default                       # required: a label for messages
    description: ...                    # optional
    notebook: notebooks/10_training.ipynb
    output_root: data/runs              # the run store
    executed_root: data/executed        # one executed notebook per job, failed ones too
    timeout: 1800                       # optional: seconds of wall clock per job (default 3600)
    defaults: {epochs: 20, lr: 0.004, threads: 1, device: cpu, ...}
    cells:
      - datasets: [digits]
        models: [smallcnn]
        settings: [CONTROL, ALGO]
        replicas: 10                    # here or in defaults
        threads: 2                      # any recipe key overrides defaults for this cell
      - datasets: [digits]
        models: [smallcnn]
        settings: [CONTROL]
        replicas: 3
        threads: [1, 2, 3, 4]           # CPU tooling configurations: a list gives one job per value
        cpu_capability: [default, avx2]

Relative paths are relative to the current working directory (run the CLI from the repository
root). Jobs pass them to the notebook as written and start its kernel in that directory (`Job.cwd`),
so executed notebooks do not depend on where the repository is checked out; Ray workers on other
hosts need the same directory (shared storage), as they need the same store.

A plan expands into one `Job` per hardware x dataset x model x setting: one papermill execution
of the notebook that trains that setting's replicas. The recipe keys are the notebook's parameters
(`params`: their types, defaults and rules); the hardware label is derived per job from device,
threads and CPU capability (`params.hardware`: 'cpu-2t', 'cpu-2t-avx2') unless the recipe gives
`hardware`. The CPU tooling keys (`TOOLING_AXES`: threads, cpu_capability) may be lists, in the
defaults or a cell: each combination of their values is a CPU tooling configuration, a hardware
label of its own, and the cell gets its jobs once per configuration.

`load_plan` reads the YAML within bounds (`MAX_PLAN_ALIASES`, `MAX_PLAN_NODES`: an alias bomb is
refused before it expands) and validates the whole plan before returning it: unknown keys, wrong
types, unknown names, names that are no path component, counts out of range (each value by its
parameter's rule, `params.value_error`; the plan's jobs and replicas by `params.MAX_JOBS` and
`params.MAX_PLAN_REPLICAS`), every job's setting against its recipe (`params.setting_error`),
missing datasets (`data.check_dataset`), CPU capabilities this machine lacks
(`environment.supported_cpu_capabilities`), duplicated jobs and the notebook's parameters cell.
Every problem is collected and raised together as a `PlanError`, each message naming its place in
the plan (e.g. ``cells[1].settings[2]``) and the valid choices, quoting at most a bounded prefix
of a value (`params.quote`). This module reads files only; running jobs is `batch`'s concern.
"""

from __future__ import annotations

import ast
import itertools
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from . import data, environment, params, store, train

# ----------------------------------------------------------------------------- plan schema
PLAN_KEYS = {
    "name": "a label for messages (required)",
    "description": "free text",
    "notebook": "path of the training notebook (required)",
    "output_root": "the run store (required)",
    "executed_root": "where each job's executed notebook is kept (required)",
    "timeout": "seconds of wall clock per job",
    "defaults": "recipe keys shared by every cell",
    "cells": "list of cells: datasets x models x settings (required)",
}
REQUIRED_PLAN_KEYS = ("name", "notebook", "output_root", "executed_root", "cells")
# A cell's axes name its jobs (one per dataset x model x setting); the notebook's other parameters
# form the recipe, except output_root, which is the plan's.
AXES = ("datasets", "models", "settings")
RECIPE_KEYS = [k for k in params.PARAMETERS if k not in ("dataset", "model", "settings", "output_root")]
CELL_KEYS = [*AXES, *RECIPE_KEYS, "timeout"]
# Recipe keys that may also be lists: the CPU tooling configurations, one hardware label each.
TOOLING_AXES = ("threads", "cpu_capability")
DEFAULT_TIMEOUT = 3600.0  # seconds per job when the plan gives none


class PlanError(ValueError):
    """A plan that cannot run; `errors` lists every problem found, each naming its place."""

    def __init__(self, source: str, errors: list[str]):
        self.errors = errors
        super().__init__(f"{source}: {len(errors)} problem(s):\n  " + "\n  ".join(errors))


@dataclass(frozen=True)
class Job:
    """One papermill execution: all replicas of one setting on one hardware x dataset x model."""

    hardware: str
    dataset: str
    model: str
    setting: str
    parameters: dict  # the notebook's parameters for this job (YAML/JSON literals)
    notebook: Path  # the notebook to execute
    executed: Path  # where its executed notebook is kept
    timeout: float  # seconds of wall clock for the whole job
    origin: str  # where in the plan the job comes from, e.g. "cells[1]"
    cwd: Path  # the kernel's working directory: relative paths in `parameters` are relative to it

    @property
    def name(self) -> str:
        return f"{self.hardware}/{self.dataset}/{self.model}/{self.setting}"

    @property
    def replicas(self) -> int:
        return self.parameters["replicas"]

    @property
    def threads(self) -> int:
        return self.parameters["threads"]

    @property
    def cpu_capability(self) -> str:
        return self.parameters["cpu_capability"]

    @property
    def output_root(self) -> Path:
        return self.cwd / self.parameters["output_root"]

    @property
    def uses_gpu(self) -> bool:
        return environment.device_type(self.parameters["device"]) == "cuda"

    def spec(self, replica: int) -> train.ReplicaSpec:
        return train.ReplicaSpec.from_parameters(self.parameters, self.setting, replica)

    def replica_dir(self, replica: int) -> Path:
        """Where the job's replica lives in the run store."""
        return store.replica_dir(self.output_root, self.hardware, self.dataset, self.model, self.setting, replica)


@dataclass(frozen=True)
class Plan:
    name: str
    path: Path
    description: str
    jobs: list[Job]


# ----------------------------------------------------------------------------- the notebook
def notebook_parameter_names(path: Path) -> list[str]:
    """The names the notebook's cell tagged `parameters` assigns (read from the .ipynb, not run)."""
    nb = json.loads(Path(path).read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{path}: expected one cell tagged 'parameters', found {len(cells)}")
    source = "".join(cells[0]["source"])
    return [
        t.id
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name)
    ]


# ----------------------------------------------------------------------------- reading YAML
# YAML aliases repeat a node without repeating its text: 9 levels of 9 aliases are 82 aliases in a
# few hundred bytes and expand into 9**9 (387 million) nodes, which grow to gigabytes before any
# check could run. A plan is refused, before anything is built from it, when it holds more
# aliases or expands into more nodes (scalars, lists, mappings; keys included) than these.
MAX_PLAN_ALIASES = 1_000
MAX_PLAN_NODES = 1_000_000  # a plan at params.MAX_JOBS with one cell per job stays far below


class PlanTooLarge(yaml.YAMLError):
    """A YAML document over MAX_PLAN_ALIASES or MAX_PLAN_NODES, refused before it is constructed."""


class _PlanLoader(yaml.SafeLoader):
    """yaml's SafeLoader (no python tags) that counts aliases while it composes the node graph and
    counts the nodes the graph expands into (each shared node once, by memo) before constructing it."""

    def __init__(self, stream):
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_PLAN_ALIASES:
                raise PlanTooLarge(f"the plan holds more than {MAX_PLAN_ALIASES} YAML aliases (plan.MAX_PLAN_ALIASES)")
        return super().compose_node(parent, index)

    def construct_document(self, node):
        size = expanded_size(node)
        if size > MAX_PLAN_NODES:
            raise PlanTooLarge(
                f"the plan expands into {size} YAML nodes (through its aliases), more than "
                f"{MAX_PLAN_NODES} (plan.MAX_PLAN_NODES)"
            )
        return super().construct_document(node)


def expanded_size(node: yaml.Node) -> int:
    """The number of nodes `node` stands for once every alias is replaced by what it names.

    Each distinct node is counted once (memo by identity), so a bomb costs as little as its text;
    a node that contains itself (a recursive alias) has no finite size and is refused.
    """
    sizes: dict[int, int | None] = {}  # id -> size; None while the node is being counted

    def size(n: yaml.Node) -> int:
        if id(n) in sizes:
            if sizes[id(n)] is None:
                raise PlanTooLarge("the plan holds a recursive YAML alias (a node that contains itself)")
            return sizes[id(n)]
        sizes[id(n)] = None
        if isinstance(n, yaml.SequenceNode):
            children = n.value
        elif isinstance(n, yaml.MappingNode):
            children = [c for pair in n.value for c in pair]
        else:
            children = []
        sizes[id(n)] = 1 + sum(map(size, children))
        return sizes[id(n)]

    return size(node)


def read_yaml(text: str):
    """The YAML document `text`, parsed safely (no python tags) and within MAX_PLAN_ALIASES and
    MAX_PLAN_NODES; PlanTooLarge (a yaml.YAMLError) when it is over them or nested too deeply."""
    loader = _PlanLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise PlanTooLarge("the plan is nested too deeply") from None
    finally:
        loader.dispose()


# ----------------------------------------------------------------------------- loading
def load_plan(
    path: str | Path,
    *,
    output_root: str | Path | None = None,
    executed_root: str | Path | None = None,
    timeout: float | None = None,
    check_data: bool = True,
) -> Plan:
    """Read, validate and expand a plan file; raise `PlanError` listing every problem.

    output_root, executed_root, timeout: override the plan's values (CLI flags, tests); timeout
        also overrides the cells' own.
    check_data: also check that every dataset's files exist and, for a CUDA device whose hardware
    label must be derived, that this machine has CUDA (off to inspect a GPU plan on a laptop).
    """
    path = Path(path)
    try:
        raw = read_yaml(path.read_text())
    except OSError as e:
        raise PlanError(str(path), [f"cannot read the plan: {e}"]) from None
    except PlanTooLarge as e:
        raise PlanError(str(path), [str(e)]) from None
    except (yaml.YAMLError, ValueError) as e:  # ValueError: an int over Python's 4300-digit limit
        raise PlanError(str(path), [f"not valid YAML: {str(e)[:500]}"]) from None
    overrides = {"output_root": output_root, "executed_root": executed_root, "timeout": timeout}
    return expand(raw, path, {k: v for k, v in overrides.items() if v is not None}, check_data)


def expand(raw, path: Path, overrides: dict, check_data: bool = True) -> Plan:
    """Validate the parsed plan `raw` (from `path`) and expand it into jobs; see `load_plan`.

    Three passes, each run only when the one before found nothing (a bad default would
    otherwise be reported again by every job): the plan's own keys and values; each job's
    setting against its recipe (`params.setting_error`) and hardware label; the datasets' files.
    """
    if not isinstance(raw, dict):
        raise PlanError(
            str(path), [f"the plan must be a mapping of keys ({', '.join(PLAN_KEYS)}), got {params.quote(raw)}"]
        )
    raw = {**raw, **overrides}
    errors = [f"unknown key {params.quote(k)}; valid keys: {', '.join(PLAN_KEYS)}" for k in raw if k not in PLAN_KEYS]
    errors += [f"missing required key {k!r} ({PLAN_KEYS[k]})" for k in REQUIRED_PLAN_KEYS if k not in raw]
    for key in ("name", "description", "notebook", "output_root", "executed_root"):
        if key in raw and not (isinstance(raw[key], (str, Path)) and str(raw[key])):
            errors.append(f"{key} must be a non-empty string, got {params.quote(raw[key])}")
    timeout = raw.get("timeout", DEFAULT_TIMEOUT)
    if e := _timeout_error(timeout):
        errors.append(f"timeout {e}")
    if isinstance(raw.get("notebook"), (str, Path)) and str(raw["notebook"]):
        errors += _notebook_errors(Path(raw["notebook"]))
    defaults = raw.get("defaults", {})
    if isinstance(defaults, dict):
        errors += _recipe_errors(defaults, "defaults", allowed=RECIPE_KEYS)
    else:
        errors.append(f"defaults must be a mapping of recipe keys, got {params.quote(defaults)}")
    cells = raw.get("cells", [])
    if not isinstance(cells, list) or "cells" in raw and not cells:
        errors.append(f"cells must be a non-empty list of cells, got {params.quote(cells)}")
        cells = []
    for i, cell in enumerate(cells):
        if not isinstance(cell, dict):
            errors.append(
                f"cells[{i}] must be a mapping with keys datasets, models, settings, ..., got {params.quote(cell)}"
            )
            continue
        errors += _cell_errors(cell, f"cells[{i}]")
        if "replicas" not in cell and "replicas" not in (defaults if isinstance(defaults, dict) else {}):
            errors.append(f"cells[{i}]: missing key 'replicas' (give it in the cell or in defaults)")
    if errors:
        raise PlanError(str(path), errors)
    if errors := _size_errors(cells, defaults):  # before expanding: --dry-run would look up every replica
        raise PlanError(str(path), errors)

    # Second pass: expand. A problem shared by several jobs of a cell is reported once.
    cwd = Path.cwd()
    notebook = cwd / raw["notebook"]
    executed_root = cwd / raw["executed_root"]
    jobs: dict[str, Job] = {}
    problems: dict[tuple[str, str], list[str]] = {}  # (cell, message) -> job names
    for i, cell in enumerate(cells):
        where = f"cells[{i}]"
        recipe = {**params.RECIPE_DEFAULTS, **defaults, **{k: v for k, v in cell.items() if k in RECIPE_KEYS}}
        for tooling, dataset, model, setting in itertools.product(
            tooling_configurations(recipe), cell["datasets"], cell["models"], cell["settings"]
        ):
            values = {
                **recipe,
                **tooling,
                "dataset": dataset,
                "model": model,
                "settings": [setting],
                "output_root": str(raw["output_root"]),
            }
            values["hardware"], problem = _hardware(values, check_data)
            job = Job(
                values["hardware"],
                dataset,
                model,
                setting,
                values,
                notebook,
                executed_root / values["hardware"] / dataset / model / f"{setting}.ipynb",
                float(overrides.get("timeout") or cell.get("timeout", timeout)),
                where,
                cwd,
            )
            # Each value was judged in the first pass; what is left is the recipe as a whole.
            found = [e for e in (problem, params.setting_error(setting, values)) if e] + params.recipe_errors(values)
            if job.name in jobs:
                found.append(
                    f"the same job as {jobs[job.name].origin}; a store cell can be planned once "
                    "(remove one, or give one of them another hardware label)"
                )
            for message in found:
                problems.setdefault((where, message), []).append(job.name)
            jobs.setdefault(job.name, job)
    errors = [
        f"{where} ({names[0]}{f' and {len(names) - 1} more jobs' if len(names) > 1 else ''}): {message}"
        for (where, message), names in problems.items()
    ]
    if errors:
        raise PlanError(str(path), errors)

    # Third pass: the datasets' files (cheap existence checks, never a download) and the CPU's capabilities.
    if check_data:
        for dataset, root in sorted({(j.dataset, j.parameters["data_root"]) for j in jobs.values()}):
            try:
                data.check_dataset(dataset, root or None)
            except (FileNotFoundError, ValueError) as e:
                users = sorted({j.origin for j in jobs.values() if j.dataset == dataset})
                errors.append(f"{', '.join(users)}: {e}")
        for capability in dict.fromkeys(j.cpu_capability for j in jobs.values()):
            if e := environment.unsupported_cpu_capability_error(capability):
                users = sorted({j.origin for j in jobs.values() if j.cpu_capability == capability})
                errors.append(f"{', '.join(users)}: {e}")
    if errors:
        raise PlanError(str(path), errors)
    return Plan(str(raw["name"]), path, str(raw.get("description", "")), list(jobs.values()))


def tooling_configurations(recipe: dict) -> list[dict]:
    """The CPU tooling configurations of a (valid) recipe: one {threads, cpu_capability} per combination
    of the values of its TOOLING_AXES, each of which is one value or a list of them."""
    choices = [v if isinstance(v := recipe[k], list) else [v] for k in TOOLING_AXES]
    return [dict(zip(TOOLING_AXES, combination)) for combination in itertools.product(*choices)]


def _size_errors(cells: list[dict], defaults: dict) -> list[str]:
    """The plan's jobs and replicas against params.MAX_JOBS and params.MAX_PLAN_REPLICAS (valid cells)."""
    jobs = [
        len(c["datasets"])
        * len(c["models"])
        * len(c["settings"])
        * len(tooling_configurations({**params.RECIPE_DEFAULTS, **defaults, **c}))
        for c in cells
    ]
    replicas = sum(n * c.get("replicas", defaults.get("replicas")) for n, c in zip(jobs, cells))
    errors = []
    if sum(jobs) > params.MAX_JOBS:
        errors.append(f"the plan expands into {sum(jobs)} jobs, more than {params.MAX_JOBS} (params.MAX_JOBS)")
    if replicas > params.MAX_PLAN_REPLICAS:
        errors.append(
            f"the plan's jobs train {replicas} replicas, more than {params.MAX_PLAN_REPLICAS} "
            "(params.MAX_PLAN_REPLICAS)"
        )
    return errors


def _timeout_error(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        return f"must be a positive number of seconds, got {params.quote(value)}"
    return None


def _recipe_errors(recipe: dict, where: str, allowed) -> list[str]:
    errors = []
    for key, value in recipe.items():
        if key not in allowed:
            errors.append(f"{where}: unknown key {params.quote(key)}; valid keys: {', '.join(allowed)}")
        elif key in TOOLING_AXES and isinstance(value, list):
            errors += _tooling_axis_errors(key, value, f"{where}.{key}")
        elif key in RECIPE_KEYS and (e := params.value_error(key, value)):  # the axes: see _cell_errors
            errors.append(f"{where}.{key} {e}")
    return errors


def _tooling_axis_errors(key: str, values: list, where: str) -> list[str]:
    """A TOOLING_AXES key given as a list: non-empty, each value by the parameter's rule, none twice."""
    if not values:
        return [f"{where} must be a value or a non-empty list of values, got []"]
    errors = [f"{where}[{j}] {e}" for j, v in enumerate(values) if (e := params.value_error(key, v))]
    if not errors and len(set(map(str, values))) < len(values):
        errors.append(f"{where} lists a value twice: {params.quote(values)}")
    return errors


def _cell_errors(cell: dict, where: str) -> list[str]:
    errors = _recipe_errors({k: v for k, v in cell.items() if k != "timeout"}, where, CELL_KEYS)
    if "timeout" in cell and (e := _timeout_error(cell["timeout"])):
        errors.append(f"{where}.timeout {e}")
    for axis in AXES:
        values = cell.get(axis)
        if values is None:
            errors.append(f"{where}: missing key {axis!r}")
        elif not isinstance(values, list) or not values:
            errors.append(f"{where}.{axis} must be a non-empty list, got {params.quote(values)}")
        else:
            errors += [
                f"{where}.{axis}[{j}] {e}" for j, v in enumerate(values) if (e := params.name_error(axis[:-1], v))
            ]  # datasets[j] names a dataset
            if len(set(map(str, values))) < len(values):
                errors.append(f"{where}.{axis} lists a name twice: {params.quote(values)}")
    return errors


def _notebook_errors(notebook: Path) -> list[str]:
    try:
        found = notebook.is_file()
    except OSError as e:  # e.g. a name too long for the file system
        return [f"notebook {params.quote(str(notebook))}: {e.strerror}"]
    if not found:
        return [f"notebook {params.quote(str(notebook))} not found (relative paths are resolved against {Path.cwd()})"]
    try:
        names = notebook_parameter_names(notebook)
    except (ValueError, SyntaxError, KeyError, json.JSONDecodeError) as e:
        return [f"notebook {params.quote(str(notebook))}: cannot read its parameters cell: {e}"]
    if sorted(names) != sorted(params.PARAMETERS):
        missing, extra = sorted(set(params.PARAMETERS) - set(names)), sorted(set(names) - set(params.PARAMETERS))
        return [
            f"notebook {params.quote(str(notebook))}: its parameters cell does not define the parameters the "
            f"runner passes: missing {params.quote(missing)}, not a parameter {params.quote(extra)}"
        ]
    return []


def _hardware(values: dict, check_data: bool) -> tuple[str, str | None]:
    """The job's hardware label (`params.hardware`) and a problem, if any."""
    try:
        return params.hardware(values), None
    except ValueError as e:  # a CUDA device on a machine without CUDA
        # With check_data off (a GPU plan inspected on a laptop, or run on a Ray cluster from a CPU-only
        # head node) the jobs get a placeholder label; on Ray each worker derives the real one.
        return PLACEHOLDER_LABEL, (f"{e} (hardware: in the plan)" if check_data else None)


# ----------------------------------------------------------------------------- labels on another machine
# The label of a CUDA job names its GPU model, which only the machine that trains it can read: a
# job run elsewhere (a Ray worker) derives its label again there (`derives_hardware`, `relabelled`).
PLACEHOLDER_LABEL = "cuda"  # a CUDA job's label where this machine has no CUDA (check_data off)


def derives_hardware(job: Job) -> bool:
    """Whether `job`'s hardware label is the derived one (device, threads, CPU capability; the GPU
    model of this machine, or PLACEHOLDER_LABEL where it has no CUDA), not one the plan gives.

    Such a label belongs to the machine that trains the job: a Ray worker derives it again. A plan
    that gives exactly the label derived here cannot be told apart from it and counts as derived.
    """
    return job.hardware == _hardware({**job.parameters, "hardware": ""}, check_data=False)[0]


def relabelled(job: Job, hardware: str) -> Job:
    """`job` under another hardware label: its parameters, its store directory and its executed
    notebook (``<executed root>/<hardware>/<dataset>/<model>/<setting>.ipynb``) follow the label."""
    if not hardware or (e := params.value_error("hardware", hardware)):
        raise ValueError(f"a job's new hardware label {e if hardware else 'must not be empty'}")
    executed_root = job.executed.parents[3]
    return replace(
        job,
        hardware=hardware,
        parameters={**job.parameters, "hardware": hardware},
        executed=executed_root / hardware / job.dataset / job.model / f"{job.setting}.ipynb",
    )
