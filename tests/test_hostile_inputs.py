"""Hostile plans, notebook parameters and manifests (issue 12): each is refused or reported with a
bounded message, never expanded into gigabytes, never placed outside its roots, never a crash.

Each test here failed before the fix (checked by running this file against the previous commit's
sources): the alias bomb grew past its memory limit, messages quoted whole values, counts had no
upper bound, ".." passed as a hardware label, and malformed manifests raised AttributeError,
KeyError or TypeError in the loader and the runner's store state.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml
from test_plan import NOTEBOOK, ROOT, VALID
from test_store import fake_result

from nnrandomness import batch, charts, data, models, noise, params, plan, store
from nnrandomness.plan import PlanError, load_plan


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Relative plan paths resolve against the working directory: keep them in tmp_path."""
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, raw) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


def with_defaults(**recipe) -> dict:
    return {**VALID, "defaults": {**VALID["defaults"], **recipe}}


# ----------------------------------------------------------------------------- YAML aliases
def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """`levels` levels of `width` aliases each: a few hundred bytes naming width**levels scalars."""
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join([*lines, f"description: *a{levels}"])


def test_alias_bomb_is_refused_before_it_expands(tmp_path):
    """In a child process limited to 1 GiB of data and 120 s: before the fix the plan grew until
    MemoryError (raised while formatting the value into its message), never a PlanError."""
    path = write(tmp_path, yaml.safe_dump({k: v for k, v in VALID.items() if k != "description"}) + alias_bomb())
    code = (
        "import sys, time\n"
        "from nnrandomness import plan\n"
        "t = time.perf_counter()\n"
        "try:\n"
        f"    plan.load_plan({str(path)!r}, check_data=False)\n"
        "except plan.PlanError as e:\n"
        "    print(f'{(time.perf_counter() - t) * 1000:.0f} ms', e)\n"
        "    sys.exit(3)\n"
    )

    def limit():  # in the child only: a bomb that gets through dies here instead of taking the machine
        resource.setrlimit(resource.RLIMIT_DATA, (1 << 30, 1 << 30))

    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, preexec_fn=limit, env=os.environ
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "plan.MAX_PLAN_NODES" in proc.stdout and len(proc.stdout) < 1000
    assert int(proc.stdout.split(" ms")[0]) < 1000  # refused in milliseconds (about 10 ms here)


def test_alias_count_and_recursive_aliases_are_refused():
    many = "a: &a x\nb: [" + ", ".join(["*a"] * (plan.MAX_PLAN_ALIASES + 1)) + "]"
    with pytest.raises(plan.PlanTooLarge, match=r"more than 1000 YAML aliases \(plan.MAX_PLAN_ALIASES\)"):
        plan.read_yaml(many)
    with pytest.raises(plan.PlanTooLarge, match="recursive YAML alias"):
        plan.read_yaml("a: &a [1, *a]")
    with pytest.raises(plan.PlanTooLarge, match="nested too deeply"):
        plan.read_yaml("[" * 5000 + "]" * 5000)
    # a few aliases below the limits are ordinary YAML
    assert plan.read_yaml("a: &a [1, 2]\nb: *a") == {"a": [1, 2], "b": [1, 2]}


@pytest.mark.parametrize("path", sorted((ROOT / "plans").glob("*.yaml")), ids=lambda p: p.name)
def test_committed_plans_read_as_before(path):
    text = path.read_text()
    assert plan.read_yaml(text) == yaml.safe_load(text)


def test_python_tags_stay_refused(tmp_path):
    with pytest.raises(PlanError, match="not valid YAML"):
        load_plan(write(tmp_path, "name: !!python/object/apply:os.system ['true']\n"), check_data=False)


# ----------------------------------------------------------------------------- bounded messages
HUGE = "x" * 100_000


@pytest.mark.parametrize(
    "raw",
    [
        [HUGE],  # the plan is no mapping
        {**VALID, HUGE: 1},  # an unknown key
        {**VALID, "name": ["x" * 1000] * 100},  # a non-string name
        {**VALID, "timeout": HUGE},
        {**VALID, "defaults": [HUGE]},
        {**VALID, "cells": HUGE},
        {**VALID, "cells": [HUGE]},
        with_defaults(epochs=HUGE),
        with_defaults(lr=HUGE),
        with_defaults(dropout=10**1000),
        with_defaults(lr_milestones=[HUGE]),
        with_defaults(device=HUGE),
        with_defaults(hardware=HUGE),
        {**VALID, "cells": [{"datasets": [HUGE], "models": ["smallcnn"], "settings": ["CONTROL"]}]},
        {**VALID, "cells": [{"datasets": ["digits", "digits", HUGE], "models": ["smallcnn"], "settings": ["ALGO"]}]},
        {**VALID, "notebook": HUGE},
        yaml.safe_dump(VALID) + "timeout: " + "9" * 5000,  # over Python's 4300 digits: a ValueError in yaml
    ],
    ids=range(17),
)
def test_plan_messages_quote_a_bounded_prefix(tmp_path, raw):
    with pytest.raises(PlanError) as e:
        load_plan(write(tmp_path, raw), check_data=False)
    assert all(len(m) < 600 for m in e.value.errors), [len(m) for m in e.value.errors]


@pytest.mark.parametrize("name", params.PARAMETERS)
def test_parameter_messages_quote_a_bounded_prefix(name):
    for value in (HUGE, [HUGE] * 1000, {HUGE: HUGE}, -(10**5000)):
        e = params.value_error(name, value)
        assert e is None or len(e) < 400, (name, len(e))
    with pytest.raises(ValueError) as e:
        params.check_parameters({HUGE: 1}, check_machine=False)
    assert HUGE not in str(e.value)


def test_quote():
    assert params.quote("abc") == "'abc'" and params.quote([1, 2]) == "[1, 2]"
    assert params.quote(HUGE) == "'" + "x" * (params.QUOTE_LIMIT - 1) + "..."  # a prefix, then ...
    deep: list = []
    for _ in range(10_000):  # reprlib stops at a few levels: no RecursionError, no walk of the whole
        deep = [deep] * 50
    assert len(params.quote(deep)) <= params.QUOTE_LIMIT + 3


# ----------------------------------------------------------------------------- upper bounds
@pytest.mark.parametrize(
    ("name", "limit"), [("replicas", "MAX_REPLICAS"), ("epochs", "MAX_EPOCHS")], ids=["replicas", "epochs"]
)
def test_counts_have_named_upper_bounds(tmp_path, name, limit):
    maximum = getattr(params, limit)
    assert params.value_error(name, maximum) is None
    assert f"params.{limit}" in params.value_error(name, maximum + 1)
    t = time.perf_counter()
    with pytest.raises(PlanError, match=rf"{name} must be at most {maximum} \(params.{limit}\), got 100000000"):
        load_plan(write(tmp_path, with_defaults(**{name: 100_000_000})), check_data=False)
    assert time.perf_counter() - t < 5
    # the notebook's parameters follow the same rule
    values = {n: p.default for n, p in params.PARAMETERS.items()}
    values.update(dataset="digits", model="smallcnn", settings=["CONTROL"], replicas=1, output_root="")
    values[name] = 100_000_000
    with pytest.raises(ValueError, match=rf"params.{limit}"):
        params.check_parameters(values, check_machine=False)


def _cells(n: int, replicas: int) -> list[dict]:
    """n cells, each on its own hardware label with every dataset x model x setting."""
    axes = {"datasets": list(data.LOADERS), "models": list(models.MODELS), "settings": list(noise.SETTINGS)}
    return [{**axes, "hardware": f"h{i}", "replicas": replicas} for i in range(n)]


def test_jobs_and_plan_replicas_have_named_upper_bounds(tmp_path):
    per_cell = len(data.LOADERS) * len(models.MODELS) * len(noise.SETTINGS)
    many = params.MAX_JOBS // per_cell + 1
    expected = rf"the plan expands into {many * per_cell} jobs, more than 10000 \(params.MAX_JOBS\)"
    with pytest.raises(PlanError, match=expected):
        load_plan(write(tmp_path, {**VALID, "cells": _cells(many, 1)}), check_data=False)
    heavy = params.MAX_PLAN_REPLICAS // (per_cell * params.MAX_REPLICAS) + 1
    with pytest.raises(PlanError, match=r"more than 1000000 \(params.MAX_PLAN_REPLICAS\)"):
        load_plan(write(tmp_path, {**VALID, "cells": _cells(heavy, params.MAX_REPLICAS)}), check_data=False)


# ----------------------------------------------------------------------------- path components
HOSTILE = ["..", ".", "", "../x", "a/b", "/abs", "a\\b", "..\\x", "x\x00y", "x\ny", "\x1b[31m", "\x7f", "é" * 200]


@pytest.mark.parametrize("label", HOSTILE, ids=repr)
def test_path_component_rule(label):
    e = store.path_component_error(label)
    assert e is not None and params.path_component_error(label) == e
    with pytest.raises(ValueError, match="a path component of the store"):
        store.replica_dir("root", label, "digits", "smallcnn", "CONTROL", 0)
    for what in ("dataset", "model", "setting"):
        assert params.name_error(what, label) is not None
    if label:  # empty: derived from device and threads
        assert params.value_error("hardware", label) is not None


def test_every_registered_name_and_derived_label_is_a_path_component():
    for what, names in params.REGISTRIES.items():
        assert all(params.name_error(what, n) is None for n in names), what
    assert store.path_component_error(params.hardware({"hardware": "", "device": "cpu", "threads": 2})) is None
    with pytest.raises(ValueError):
        store.replica_dir("root", "cpu-1t", "digits", "smallcnn", "CONTROL", -1)
    with pytest.raises(ValueError, match="filter hardware must not be '..'"):
        list(store.iter_replica_dirs("root", hardware=".."))


def inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


@pytest.mark.parametrize("label", [*HOSTILE, "ok-label"], ids=repr)
def test_no_plan_places_a_file_outside_its_roots(tmp_path, label):
    """A plan that passes (only "ok-label" here) puts every replica and executed notebook inside its roots.

    Before the fix `hardware: ".."` passed with job `../digits/smallcnn/CONTROL`."""
    for raw in (
        with_defaults(hardware=label),
        {**VALID, "cells": [{"datasets": ["digits"], "models": [label], "settings": ["CONTROL"]}]},
        {**VALID, "cells": [{"datasets": [label], "models": ["smallcnn"], "settings": ["CONTROL"]}]},
        {**VALID, "cells": [{"datasets": ["digits"], "models": ["smallcnn"], "settings": [label]}]},
    ):
        try:
            p = load_plan(write(tmp_path, raw), check_data=False)
        except PlanError:
            continue
        assert label in ("", "ok-label")
        for job in p.jobs:
            assert inside(job.executed, tmp_path / "executed"), job.executed
            assert all(inside(job.replica_dir(k), tmp_path / "runs") for k in range(job.replicas)), job.name


def run_parameters_cells(injected: dict) -> dict:
    """Execute the training notebook's cells up to its check, with `injected` assigned after the
    parameters cell as papermill injects it; the namespace they leave. (The caller stubs
    charts.enable: this process's Altair renderer stays as it was.)"""
    cells = [c for c in nbformat.read(str(NOTEBOOK), as_version=4).cells if c.cell_type == "code"]
    check = next(i for i, c in enumerate(cells) if "params.from_namespace" in c.source)
    namespace: dict = {}
    for cell in cells[: check + 1]:
        exec(cell.source, namespace)
        if "parameters" in cell.metadata.get("tags", []):
            namespace.update(injected)
    return namespace


@pytest.mark.parametrize("label", [*HOSTILE, "ok-label"], ids=repr)
@pytest.mark.parametrize("parameter", ["hardware", "dataset", "model", "settings"])
def test_no_notebook_parameter_places_a_replica_outside_the_store(tmp_path, monkeypatch, parameter, label):
    """Whatever papermill injects, the notebook either refuses it in its check cell or every replica it
    will write (`store.replica_dir` under `output_root`) lies inside the store."""
    monkeypatch.setattr(charts, "enable", lambda: None)
    root = tmp_path / "store"
    injected = {"output_root": str(root), parameter: [label] if parameter == "settings" else label}
    try:
        ns = run_parameters_cells(injected)
    except ValueError:
        return
    assert label in ("", "ok-label") and parameter == "hardware"
    for setting in ns["settings"]:
        d = store.replica_dir(ns["output_root"], ns["hardware"], ns["dataset"], ns["model"], setting, 0)
        assert inside(d, root), d


def test_papermill_with_a_dotdot_hardware_writes_nothing(tmp_path):
    """End to end: `-p hardware ..` fails in the check cell; before the fix the replica was written
    beside the store (tmp_path/digits/...)."""
    cmd = [sys.executable, "-m", "papermill", str(NOTEBOOK), str(tmp_path / "out.ipynb"), "--no-progress-bar"]
    injected = {"hardware": "..", "output_root": str(tmp_path / "store"), "replicas": 1, "epochs": 1}
    cmd += ["-y", json.dumps({**injected, "settings": ["CONTROL"]})]  # JSON is YAML
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    assert proc.returncode != 0
    assert "hardware must not be '..'" in proc.stderr + proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ipynb"]


# ----------------------------------------------------------------------------- manifests
def _edit(manifest: dict, change: str):
    """`manifest` damaged as `change` says: a whole value, or a key removed or replaced (a.b=JSON)."""
    if change.startswith("="):
        return json.loads(change[1:])
    place, _, value = change.partition("=")
    *parents, key = place.split(".")
    target = manifest
    for p in parents:
        target = target[p]
    if value:
        target[key] = json.loads(value)
    else:
        del target[key]
    return manifest


MALFORMED = {
    "=null": "the manifest must be an object, got null",
    "=[]": "the manifest must be an object, got a list",
    '="x"': "the manifest must be an object, got a string",
    "spec": "missing key 'spec'",
    "spec=null": "spec must be an object, got null",
    "spec.dataset": "missing key 'spec.dataset'",
    "spec.dataset=3": "spec.dataset must be a string, got a number",
    "spec.replica=true": "spec.replica must be an integer, got true/false",
    'spec.epochs="2"': "spec.epochs must be an integer, got a string",
    "setting": "missing key 'setting'",
    'setting.varied="init"': "setting.varied must be a list, got a string",
    "setting.varied=[1]": "setting.varied must be a list of source names",
    "setting.deterministic=null": "setting.deterministic must be true/false, got null",
    "final=[]": "final must be an object, got a list",
    'final={"test_accuracy": "high"}': "final must map names to numbers",
    "timings=null": "timings must be an object, got null",
    'environment="x"': "environment must be an object, got a string",
    "files=null": "files must be an object, got null",
    'hardware=".."': "hardware must not be '..'",
    "weights_hash=0": "weights_hash must be a string, got a number",
}


@pytest.fixture
def store_root(tmp_path):
    for k, preds in enumerate([[0, 1, 2, 1], [0, 2, 2, 0]]):
        store.write_replica(tmp_path / "store", "cpu-1t", fake_result(k, preds))
    return tmp_path / "store"


@pytest.mark.parametrize("change", MALFORMED)
def test_malformed_manifest_is_reported_and_skipped(store_root, change):
    bad = store_root / "cpu-1t/digits_groups/smallcnn/ALGO/replica-0"
    m = json.loads((bad / store.MANIFEST).read_text())
    (bad / store.MANIFEST).write_text(json.dumps(_edit(m, change)))
    with pytest.raises(ValueError, match="malformed manifest"):
        store.read_manifest(bad)
    assert not store.is_complete(bad)
    with pytest.warns(UserWarning, match="skipped 1"):
        runs = store.load_runs(store_root)
    assert runs.replicas["replica"].tolist() == [1]
    ((where, reason),) = runs.problems
    assert where == str(bad) and reason.startswith("malformed manifest: ") and MALFORMED[change] in reason, reason
    assert len(list(runs.iter_cells())) == 1


def test_missing_checksum_and_unreadable_manifests_are_reported(store_root):
    bad = store_root / "cpu-1t/digits_groups/smallcnn/ALGO/replica-0"
    m = json.loads((bad / store.MANIFEST).read_text())
    del m["files"]["history.parquet"]
    (bad / store.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ValueError, match="missing key 'files.history.parquet'"):
        store.read_manifest(bad)
    (bad / store.MANIFEST).write_bytes(b"\xff\xfe not json")
    with pytest.raises(ValueError, match="unreadable manifest"):
        store.read_manifest(bad)
    (bad / store.MANIFEST).write_text("[" * 100_000 + "]" * 100_000)  # deeper than json's recursion
    with pytest.raises(ValueError, match="unreadable manifest"):
        store.read_manifest(bad)


def test_the_runners_store_state_skips_a_malformed_manifest(tmp_path):
    """`nnrandomness run --dry-run` reads the store through `batch.store_state`: a malformed manifest
    is a replica still to run, not an AttributeError (null) or KeyError (no spec)."""
    (job,) = load_plan(
        write(
            tmp_path, {**VALID, "cells": [{"datasets": ["digits"], "models": ["smallcnn"], "settings": ["CONTROL"]}]}
        ),
        check_data=False,
    ).jobs
    for k, content in enumerate(["null", json.dumps({"files": {}})]):
        d = job.replica_dir(k)
        d.mkdir(parents=True)
        (d / store.MANIFEST).write_text(content)
        for name in store.FILES:
            (d / name).write_bytes(b"")
    assert batch.store_state(job) == ([0, 1], [])
