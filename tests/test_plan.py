"""Plans: the committed plans expand as intended, invalid plans are refused with messages that
name the bad key or value, and the training notebook's parameters match the runner's.

Nothing here starts a kernel (see test_batch.py for execution)."""

from __future__ import annotations

import ast
import copy
import json
from pathlib import Path

import pytest
import yaml

from nnrandomness import PAPER_SETTINGS, cli, plan
from nnrandomness.params import PARAMETERS, check_parameters
from nnrandomness.plan import PlanError, load_plan

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "10_training.ipynb"

VALID = {
    "name": "t",
    "notebook": str(NOTEBOOK),
    "output_root": "runs",
    "executed_root": "executed",
    "defaults": {"replicas": 2, "epochs": 3, "lr": 0.004, "augment": True, "dropout": 0.1, "threads": 1},
    "cells": [{"datasets": ["digits"], "models": ["smallcnn"], "settings": ["CONTROL", "ALGO"]}],
}


def write(tmp_path: Path, raw) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(raw) if not isinstance(raw, str) else raw)
    return path


def notebook_defaults() -> dict:
    """The values of the notebook's parameters cell, read without running it."""
    nb = json.loads(NOTEBOOK.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    return {
        t.id: ast.literal_eval(node.value) for node in ast.parse("".join(cell["source"])).body for t in node.targets
    }


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Relative plan paths resolve against the working directory: keep them in tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NNRANDOMNESS_DATA", raising=False)


# ----------------------------------------------------------------------------- the committed plans
@pytest.fixture
def at_root(monkeypatch):
    """The committed plans' paths are relative to the repository root, where the CLI runs."""
    monkeypatch.chdir(ROOT)


@pytest.mark.usefixtures("at_root")
def test_default_plan_expands_to_the_study():
    p = load_plan(ROOT / "plans" / "default.yaml")
    names = [j.name for j in p.jobs]
    assert len(names) == len(set(names)) == 25
    main = "cpu-1t/mnist1d/cnn1d"
    # issue 9: at least 100 replicas of ALGO, each single source and ULP on the main cell; 30 on the others
    assert {j.setting: j.replicas for j in p.jobs if j.name.startswith(main + "/") and j.replicas >= 100} == {
        s: 100 for s in ("ALGO", "INIT", "ORDER", "AUG", "DROPOUT", "ULP")
    }
    assert {f"{main}/{s}" for s in PAPER_SETTINGS} <= set(names)
    others = {"cpu-1t/mnist1d/cnn1d_bn/ALGO", "cpu-1t/mnist1d/mlp1d/ALGO", "cpu-1t/mnist1d_groups/cnn1d/ALGO"}
    assert {j.name: j.replicas for j in p.jobs if j.name in others} == dict.fromkeys(others, 30)
    # the CPU's tooling configurations: threads 1-4, the ATen capability avx2 at 1 and 2, each with CONTROL's seeds
    configurations = {f"cpu-{t}t" for t in (1, 2, 3, 4)} | {f"cpu-{t}t-avx2" for t in (1, 2)}
    assert {
        j.name.split("/")[0] for j in p.jobs if j.setting == "CONTROL" and "/cnn1d/" in j.name and "/mnist1d/" in j.name
    } == configurations
    assert {j.name.split("/")[0] for j in p.jobs if j.setting == "ALGO" and j.name.endswith("/mnist1d/cnn1d/ALGO")} == (
        configurations
    )
    assert all(j.parameters["device"] == "cpu" for j in p.jobs)
    # one recipe for the whole plan: jobs differ only by what names the job
    named = ("dataset", "model", "settings", "replicas", "threads", "cpu_capability", "hardware", "extra_tests")
    recipes = {json.dumps({k: v for k, v in j.parameters.items() if k not in named}, sort_keys=True) for j in p.jobs}
    assert len(recipes) == 1
    # paths as written (relative to the repository root, where the runner is started)
    assert all(j.parameters["output_root"] == "data/runs" for j in p.jobs)
    assert p.jobs[0].executed == ROOT / "data/executed/cpu-1t/mnist1d/cnn1d/ALGO.ipynb"


@pytest.mark.usefixtures("at_root")
def test_smoke_plan_is_tiny():
    p = load_plan(ROOT / "plans" / "smoke.yaml")
    assert [j.setting for j in p.jobs] == ["CONTROL", "ALGO"]
    assert all(j.replicas * j.parameters["epochs"] <= 12 for j in p.jobs)


@pytest.mark.usefixtures("at_root")
def test_paper_plan_follows_the_protocol():
    """The GPU plan cannot be fully checked here (no CUDA, no CIFAR): its structure can."""
    with pytest.raises(PlanError, match="cannot derive the hardware label of device 'cuda'"):
        load_plan(ROOT / "plans" / "paper.yaml")
    p = load_plan(ROOT / "plans" / "paper.yaml", check_data=False)
    by = {(j.dataset, j.model, j.setting): j for j in p.jobs}
    assert len(by) == len(p.jobs) == 4 * (2 * 2 + 2 + 1 + 1)  # CIFAR-10 also trains smallcnn_bn (figure 2)
    assert {j.setting for j in p.jobs} == {"ALGO+IMPL-PAPER", "ALGO-PAPER", "IMPL", "CONTROL"}
    assert all(j.uses_gpu for j in p.jobs)
    small, resnet = by["cifar10", "smallcnn", "CONTROL"], by["cifar100", "resnet18", "ALGO-PAPER"]
    assert (small.replicas, small.parameters["epochs"], small.parameters["lr"]) == (2, 200, 0.0004)
    assert small.parameters["lr_milestones"] == [50, 100] and not small.parameters["augment"]
    assert resnet.parameters["lr_milestones"] == [50, 100, 150] and resnet.parameters["augment"]
    assert by["celeba", "resnet18", "IMPL"].parameters["epochs"] == 10
    assert by["imagenet_stream", "resnet50", "ALGO+IMPL-PAPER"].replicas == 5


# ----------------------------------------------------------------------------- the notebook
def test_notebook_parameters_are_the_runners():
    """The parameters cell defines exactly what every job passes (papermill would only warn)."""
    assert plan.notebook_parameter_names(NOTEBOOK) == list(PARAMETERS)


def test_notebook_defaults_are_valid_and_tiny():
    values = notebook_defaults()
    check_parameters(values)
    assert values["output_root"] == "" and values["hardware"] == "" and values["device"] == "cpu"
    assert values["replicas"] * values["epochs"] * len(values["settings"]) <= 40  # seconds for a student


@pytest.mark.parametrize(
    "changes, unknown, message",
    [
        ({}, {"epoch"}, "unknown parameter 'epoch': papermill injected it"),
        ({}, {"epoch", "lrs"}, "unknown parameter 'epoch', 'lrs': "),
        ({"replicas": "3"}, (), "replicas must be an integer, got '3'"),
        ({"replicas": True}, (), "replicas must be an integer, got True"),
        ({"settings": "CONTROL"}, (), "settings must be a list, got 'CONTROL'"),
        ({"settings": ["CONTROL", "ALG"]}, (), "unknown setting 'ALG'; valid settings: ALGO+IMPL"),
        ({"lr_milestones": [0]}, (), "lr_milestones must be a list of positive epoch numbers"),
        ({"lr": "4e-3"}, (), "lr must be a number, got '4e-3' (YAML reads 2e-3 as a string: write 0.002)"),
        ({"augment": "yes"}, (), "augment must be true/false, got 'yes'"),
        ({"settings": ["AUG"], "augment": False}, (), "setting 'AUG' varies only augmentation"),
        ({"dataset": "cifar10"}, (), "dataset 'cifar10' not found"),
    ],
)
def test_check_parameters_refuses(changes, unknown, message):
    values = {**notebook_defaults(), **changes}
    with pytest.raises(ValueError) as e:
        check_parameters(values, unknown=unknown)
    assert message in str(e.value)


def test_check_parameters_wants_every_parameter():
    values = notebook_defaults()
    del values["threads"]
    with pytest.raises(ValueError, match="missing parameter 'threads'"):
        check_parameters(values)


# ----------------------------------------------------------------------------- invalid plans
def _set(raw: dict, path: str, value) -> None:
    """raw[path] = value for a dotted path with list indices (cells.0.settings); None deletes."""
    *parents, last = path.split(".")
    for p in parents:
        raw = raw[int(p)] if p.isdigit() else raw[p]
    key = int(last) if last.isdigit() else last
    if value is None:
        del raw[key]
    else:
        raw[key] = value


# (changes as {dotted path: value, None deletes}, what the message must say)
INVALID = [
    ({"nmae": "default"}, "unknown key 'nmae'; valid keys: name, description, notebook"),
    ({"name": None}, "missing required key 'name'"),
    ({"cells.0.setting": ["CONTROL"]}, "cells[0]: unknown key 'setting'; valid keys: datasets, models, settings"),
    ({"defaults.epoch": 3}, "defaults: unknown key 'epoch'; valid keys: replicas, epochs"),
    ({"defaults.epochs": "20"}, "defaults.epochs must be an integer, got '20'"),
    ({"defaults.lr": "2e-3"}, "defaults.lr must be a number, got '2e-3' (YAML reads 2e-3 as a string: write 0.002)"),
    ({"defaults.augment": 1}, "defaults.augment must be true/false, got 1"),
    ({"cells.0.settings": "CONTROL"}, "cells[0].settings must be a non-empty list, got 'CONTROL'"),
    ({"cells.0.settings": []}, "cells[0].settings must be a non-empty list, got []"),
    ({"cells.0.settings.1": "ALG"}, "cells[0].settings[1] unknown setting 'ALG'; valid settings: ALGO+IMPL, ALGO"),
    ({"cells.0.settings.1": "CONTROL"}, "cells[0].settings lists a name twice"),
    ({"cells.1.models.0": "bigcnn"}, "cells[1].models[0] unknown model 'bigcnn'; valid models: smallcnn, smallcnn_bn"),
    ({"cells.0.datasets.0": "mnist"}, "cells[0].datasets[0] unknown dataset 'mnist'; valid datasets: digits"),
    ({"cells.1.replicas": 0}, "cells[1].replicas must be an integer >= 1, got 0"),
    ({"defaults.replicas": None}, "cells[0]: missing key 'replicas'"),
    ({"defaults.epochs": -1}, "defaults.epochs must be an integer >= 1, got -1"),
    ({"defaults.threads": 0}, "defaults.threads must be an integer >= 1, got 0"),
    ({"defaults.dropout": 1.5}, "defaults.dropout must be in [0, 1), got 1.5"),
    ({"defaults.precision": "fp16"}, "defaults.precision unknown precision 'fp16'; valid precisions: fp32, tf32, bf16"),
    ({"defaults.device": "tpu"}, "defaults.device unknown device 'tpu'; valid devices: cpu, cuda, mps"),
    ({"defaults.hardware": "my/box"}, "defaults.hardware must be a path-safe label"),
    ({"timeout": -5}, "timeout must be a positive number of seconds, got -5"),
    ({"cells.0.timeout": "1h"}, "cells[0].timeout must be a positive number of seconds, got '1h'"),
    ({"notebook": "notebooks/missing.ipynb"}, "notebook 'notebooks/missing.ipynb' not found"),
    ({"cells": []}, "cells must be a non-empty list of cells, got []"),
    ({"cells.0": "digits"}, "cells[0] must be a mapping with keys datasets, models, settings"),
    ({"cells.1.datasets": ["cifar10"]}, "cells[1]: dataset 'cifar10' not found at <no data root"),
    (
        {"cells.0.settings": ["AUG"], "defaults.augment": False},
        "cells[0] (cpu-1t/digits/smallcnn/AUG): setting 'AUG' varies only augmentation, "
        "but the recipe has augment=False",
    ),
    (
        {"cells.0.settings": ["DROPOUT"], "defaults.dropout": 0.0},
        "cells[0] (cpu-1t/digits/smallcnn/DROPOUT): setting 'DROPOUT' varies only dropout, "
        "but the recipe has dropout=0",
    ),
    ({"cells.1.settings": ["ALGO"]}, "cells[1] (cpu-1t/digits/smallcnn/ALGO): the same job as cells[0]"),
    # the CPU tooling keys, one value or a list of them
    (
        {"defaults.cpu_capability": "sse"},
        "defaults.cpu_capability unknown cpu_capability 'sse'; valid choices: default, avx2, avx512",
    ),
    ({"cells.1.threads": []}, "cells[1].threads must be a value or a non-empty list of values, got []"),
    ({"cells.1.threads": [1, 0]}, "cells[1].threads[1] must be an integer >= 1, got 0"),
    ({"cells.1.threads": [2, 2]}, "cells[1].threads lists a value twice: [2, 2]"),
    ({"defaults.threads": [1, "2"]}, "defaults.threads[1] must be an integer, got '2'"),
    (
        {"cells.1.cpu_capability": ["default", "AVX2"]},
        "cells[1].cpu_capability[1] unknown cpu_capability 'AVX2'; valid choices: default, avx2, avx512",
    ),
    ({"cells.1.threads": [1, 2], "cells.1.hardware": "box"}, "cells[1] (box/digits/smallcnn/INIT): the same job as"),
]


@pytest.mark.parametrize("changes, message", INVALID, ids=[str(c)[:50] for c, _ in INVALID])
def test_invalid_plans_are_refused_with_the_bad_key(tmp_path, changes, message):
    raw = copy.deepcopy(VALID)
    # a second cell, so that a message must name the right one
    raw["cells"].append({"datasets": ["digits"], "models": ["smallcnn"], "settings": ["INIT"], "replicas": 3})
    for path, value in changes.items():
        _set(raw, path, value)
    with pytest.raises(PlanError) as e:
        load_plan(write(tmp_path, raw))
    assert message in str(e.value), str(e.value)


def test_every_problem_is_reported_at_once(tmp_path):
    raw = copy.deepcopy(VALID)
    raw["defaults"]["epochs"] = 0
    raw["cells"][0]["settings"] = ["ALG", "CONTROL"]
    raw["cells"][0]["models"] = ["bigcnn"]
    with pytest.raises(PlanError) as e:
        load_plan(write(tmp_path, raw))
    assert len(e.value.errors) == 3, e.value.errors


@pytest.mark.parametrize(
    "text, message",
    [
        ("cells: [", "not valid YAML"),
        ("- a list", "the plan must be a mapping"),
    ],
)
def test_unreadable_plans(tmp_path, text, message):
    with pytest.raises(PlanError, match=message):
        load_plan(write(tmp_path, text))


def test_yaml_is_data_never_code(tmp_path):
    """yaml.safe_load: a Python tag is an error, not an object construction."""
    text = yaml.safe_dump(VALID) + "description: !!python/object/apply:os.system ['touch pwned']\n"
    with pytest.raises(PlanError, match="not valid YAML"):
        load_plan(write(tmp_path, text))
    assert not (tmp_path / "pwned").exists()


def test_overrides_and_relative_paths(tmp_path):
    raw = {**VALID, "timeout": 60, "cells": [{**VALID["cells"][0], "timeout": 30, "threads": 2, "hardware": "box"}]}
    p = load_plan(write(tmp_path, raw), output_root=tmp_path / "elsewhere", timeout=5)
    job = p.jobs[0]
    assert job.name == "box/digits/smallcnn/CONTROL" and job.threads == 2
    assert job.timeout == 5  # the command line beats the cell, which beats the plan
    assert load_plan(write(tmp_path, raw)).jobs[0].timeout == 30
    assert job.output_root == tmp_path / "elsewhere"
    assert job.executed == tmp_path / "executed/box/digits/smallcnn/CONTROL.ipynb"
    assert set(job.parameters) == set(PARAMETERS)
    assert job.spec(1).replica == 1 and job.spec(1).setting == "CONTROL"


# ----------------------------------------------------------------------------- CPU tooling configurations
def tooling_plan(tmp_path, defaults=None, **cell) -> Path:
    raw = copy.deepcopy(VALID)
    raw["defaults"].update(defaults or {})
    raw["cells"] = [{"datasets": ["digits"], "models": ["smallcnn"], "settings": ["CONTROL"], **cell}]
    return write(tmp_path, raw)


def test_tooling_lists_expand_into_one_job_per_configuration(tmp_path):
    """threads x cpu_capability: each combination is a hardware label, so its replicas form their own cell."""
    p = load_plan(tooling_plan(tmp_path, threads=[1, 2, 3, 4], cpu_capability=["default", "avx2"]))
    labels = [f"cpu-{t}t{c}" for t in (1, 2, 3, 4) for c in ("", "-avx2")]
    assert [j.name for j in p.jobs] == [f"{label}/digits/smallcnn/CONTROL" for label in labels]
    for job in p.jobs:  # each job gets one value of each: what the notebook and job_environment read
        assert job.hardware == f"cpu-{job.threads}t" + ("" if job.cpu_capability == "default" else "-avx2")
        assert isinstance(job.parameters["threads"], int) and isinstance(job.parameters["cpu_capability"], str)
        assert job.executed == tmp_path / f"executed/{job.hardware}/digits/smallcnn/CONTROL.ipynb"
    # in the defaults too; a cell's single value overrides the defaults' list
    p = load_plan(tooling_plan(tmp_path, {"threads": [1, 2]}))
    assert [j.hardware for j in p.jobs] == ["cpu-1t", "cpu-2t"]
    p = load_plan(tooling_plan(tmp_path, {"threads": [1, 2]}, threads=3))
    assert [j.hardware for j in p.jobs] == ["cpu-3t"]


def test_tooling_lists_count_against_the_plans_limits(tmp_path, monkeypatch):
    monkeypatch.setattr(plan.params, "MAX_JOBS", 7)
    with pytest.raises(PlanError, match=r"the plan expands into 8 jobs, more than 7 \(params.MAX_JOBS\)"):
        load_plan(tooling_plan(tmp_path, threads=[1, 2, 3, 4], cpu_capability=["default", "avx2"]))
    monkeypatch.setattr(plan.params, "MAX_PLAN_REPLICAS", 7)  # 2 replicas x 4 jobs
    with pytest.raises(PlanError, match=r"train 8 replicas, more than 7 \(params.MAX_PLAN_REPLICAS\)"):
        load_plan(tooling_plan(tmp_path, threads=[1, 2, 3, 4]))


def test_a_capability_this_cpu_lacks_is_refused_before_any_job(tmp_path, monkeypatch):
    monkeypatch.setattr(plan.environment, "supported_cpu_capabilities", lambda: ("default", "avx2"))
    path = tooling_plan(tmp_path, cpu_capability=["avx2", "avx512"])
    with pytest.raises(PlanError) as e:
        load_plan(path)
    assert e.value.errors == [
        f"cells[0]: cpu_capability 'avx512': this machine's CPU ({plan.environment.cpu_model()}) does not support "
        "it; supported here: default, avx2"
    ]
    assert [j.hardware for j in load_plan(path, check_data=False).jobs] == ["cpu-1t-avx2", "cpu-1t-avx512"]


def test_dry_run_shows_the_hardware_labels(tmp_path, capsys):
    path = tooling_plan(tmp_path, threads=[1, 2], cpu_capability=["default", "avx2"])
    assert cli.main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "hardware labels: cpu-1t, cpu-1t-avx2, cpu-2t, cpu-2t-avx2 (each CPU tooling configuration" in out
    assert "cpu-2t-avx2/digits/smallcnn/CONTROL" in out


# ----------------------------------------------------------------------------- the CLI refuses early
def test_cli_refuses_an_invalid_plan_and_writes_nothing(tmp_path, capsys):
    raw = copy.deepcopy(VALID)
    raw["cells"][0]["settings"] = ["CONTROL", "ALG"]
    code = cli.main(["run", str(write(tmp_path, raw))])
    assert code == 2
    assert "cells[0].settings[1] unknown setting 'ALG'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.yaml"]


def test_cli_runs_jobs_wider_than_the_cpus_alone_with_a_warning(tmp_path, capsys):
    """A 4-thread job on 2 CPU slots is legal (its bits are the 4-thread ones): it holds every slot."""
    raw = copy.deepcopy(VALID)
    raw["defaults"]["threads"] = 4
    assert cli.main(["run", str(write(tmp_path, raw)), "--cpus", "2", "--workers", "2", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "WARNING: cpu-4t/digits/smallcnn/CONTROL has threads=4, more than the 2 CPU slots (--cpus)" in captured.err
    assert "it runs alone" in captured.err
    assert "schedule: up to 1 of 2 jobs at once (2 workers; 2 CPU slots" in captured.out


def test_dry_run_lists_jobs(tmp_path, capsys):
    assert cli.main(["run", str(write(tmp_path, VALID)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 jobs, 0 complete, 2 to run" in out
    assert "cpu-1t/digits/smallcnn/ALGO" in out and "to run (0/2 replicas done)" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.yaml"]


def test_dry_run_prints_the_schedule_of_every_gpu_busy(tmp_path, capsys, monkeypatch):
    """--gpus sizes the pool to GPUs x --jobs-per-gpu (the paper plan on 8 GPUs: 8 jobs at once)."""
    monkeypatch.chdir(ROOT)
    roots = ["--output-root", str(tmp_path / "runs"), "--executed-root", str(tmp_path / "executed")]
    gpus = ["--gpus", "0,1,2,3,4,5,6,7", "--cpus", "16"]
    assert cli.main(["run", "plans/default.yaml", "--dry-run", *gpus, *roots]) == 0
    out = capsys.readouterr().out
    assert "schedule: up to 8 of 25 jobs at once (8 workers; 16 CPU slots" in out
    assert "8 GPU slots (8 GPUs x 1 per GPU)" in out
    assert cli.main(["run", "plans/default.yaml", "--dry-run", *gpus, "--jobs-per-gpu", "2", *roots]) == 0
    assert "up to 16 of 25 jobs at once (16 workers; 16 CPU slots" in capsys.readouterr().out
    # Without GPUs the pool is --workers (default 1), whatever the cores.
    assert cli.main(["run", "plans/default.yaml", "--dry-run", "--cpus", "16", *roots]) == 0
    assert "up to 1 of 25 jobs at once (1 workers;" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gpus", "0,1", "--workers", "1"], "--workers 1 contradicts --gpus 0,1 x --jobs-per-gpu 1 (2 GPU slots)"),
        (["--jobs-per-gpu", "2"], "--jobs-per-gpu needs --gpus"),
        (["--gpus", "0", "--jobs-per-gpu", "0"], "--jobs-per-gpu must be >= 1, got 0"),
    ],
)
def test_contradictory_pool_options_are_refused(tmp_path, capsys, args, message):
    assert cli.main(["run", str(write(tmp_path, VALID)), "--dry-run", *args]) == 2
    assert message in capsys.readouterr().err
