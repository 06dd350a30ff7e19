"""The training notebook's parameter contract (`params`): each rule's message, the parameters cell
against the contract (names and help, as papermill's inspector reads them), the notebook's check
read from its own namespace (unknown names, re-runs after "Run all", papermill's text for lists),
and what this machine lacks (a device, cores)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest
import torch
from nbclient import NotebookClient
from papermill.cli import _resolve_type

from nnrandomness import environment, params, train
from nnrandomness.params import PARAMETERS, RECIPE_DEFAULTS, check_parameters, from_namespace, value_error

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "10_training.ipynb"


def cells() -> list:
    return nbformat.read(str(NOTEBOOK), as_version=4).cells


def parameters_cell():
    return next(c for c in cells() if "parameters" in c.metadata.get("tags", []))


def valid() -> dict:
    """The notebook's own values (its tiny preset), read without running it."""
    namespace: dict = {}
    exec(parameters_cell().source, namespace)
    return {n: namespace[n] for n in PARAMETERS}


# ----------------------------------------------------------------------------- one value
@pytest.mark.parametrize(
    "name, value, message",
    [
        ("epochs", 0, "must be an integer >= 1, got 0"),
        ("epochs", 2.5, "must be an integer >= 1, got 2.5"),
        ("replicas", True, "must be an integer, got True"),
        ("replicas", "3", "must be an integer, got '3'"),
        ("base_seed", -1, "must be an integer >= 0, got -1"),
        ("threads", 0, "must be an integer >= 1, got 0"),
        ("threads", None, "must be an integer, got None"),
        ("lr", 0, "must be a positive number, got 0"),
        ("lr", "2e-3", "must be a number, got '2e-3' (YAML reads 2e-3 as a string: write 0.002)"),
        ("lr", float("nan"), "must be a finite number, got nan"),
        ("dropout", 1.0, "must be in [0, 1), got 1.0"),
        ("augment", 1, "must be true/false, got 1"),
        ("lr_milestones", [0, 3], "must be a list of positive epoch numbers, got [0, 3]"),
        ("settings", [], "must name at least one setting"),
        ("settings", ["CONTROL", "ALG"], "unknown setting 'ALG'; valid settings: ALGO+IMPL, ALGO, IMPL, CONTROL"),
        ("dataset", "mnist", "unknown dataset 'mnist'; valid datasets: digits, digits_groups"),
        ("model", "bigcnn", "unknown model 'bigcnn'; valid models: smallcnn, smallcnn_bn"),
        ("model", 3, "must be a string, got 3"),
        ("precision", "fp16", "unknown precision 'fp16'; valid precisions: fp32, tf32, bf16"),
        ("device", "tpu", "unknown device 'tpu'; valid devices: cpu, cuda, mps (optionally ':index')"),
        ("hardware", "my/box", "must be a path-safe label (letters, digits, . _ + -), got 'my/box'"),
        ("cpu_capability", "sse", "unknown cpu_capability 'sse'; valid choices: default, avx2, avx512"),
        ("cpu_capability", "AVX2", "unknown cpu_capability 'AVX2'; valid choices: default, avx2, avx512"),
        ("cpu_capability", "", "unknown cpu_capability ''; valid choices: default, avx2, avx512"),
        ("cpu_capability", 2, "must be a string, got 2"),
    ],
)
def test_each_bad_value_is_named_with_the_valid_choices(name, value, message):
    assert message in value_error(name, value)


@pytest.mark.parametrize("name", list(PARAMETERS))
def test_the_notebooks_values_and_the_recipe_defaults_pass(name):
    assert value_error(name, valid()[name]) is None
    if name in RECIPE_DEFAULTS:
        assert value_error(name, RECIPE_DEFAULTS[name]) is None


def test_the_spec_is_judged_by_the_same_rules():
    """validate_spec and a plan refuse a bad value with one message: the rule is written once."""
    for field, value in [("epochs", 0), ("threads", 0), ("lr", -1.0), ("precision", "fp16"), ("device", "tpu")]:
        with pytest.raises(ValueError) as e:
            train.validate_spec(dataclasses.replace(train.ReplicaSpec(), **{field: value}), check_data=False)
        assert value_error(field, value) in str(e.value)
    # a spec may leave torch's thread count alone; the notebook may not
    train.validate_spec(dataclasses.replace(train.ReplicaSpec(), threads=None), check_data=False)


def test_specs_are_built_from_the_parameters_and_back():
    values = valid()
    spec = train.ReplicaSpec.from_parameters(values, "ALGO", 2)
    assert (spec.setting, spec.replica, spec.lr_milestones, spec.data_root) == ("ALGO", 2, (4,), None)
    assert spec.parameters() == {**{n: values[n] for n in spec.parameters()}, "settings": ["ALGO"]}
    # A plan that leaves a recipe key out gets the spec's default (the paper's recipe).
    default = train.ReplicaSpec().parameters()
    assert {n: default[n] for n in RECIPE_DEFAULTS if n in default} == {
        n: v for n, v in RECIPE_DEFAULTS.items() if n in default
    }


# ----------------------------------------------------------------------------- the parameters cell
def test_the_parameters_cell_is_the_contract(caplog):
    """papermill's inspector (`--help-notebook`) parses every line, without a warning, into the names and
    help texts of `params`, in its order: the cell and the contract cannot drift apart."""
    with caplog.at_level(logging.WARNING, logger="papermill"):
        inspected = papermill.inspect_notebook(str(NOTEBOOK))
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert list(inspected) == list(PARAMETERS)
    assert {n: p["help"] for n, p in inspected.items()} == {n: p.help for n, p in PARAMETERS.items()}


# ----------------------------------------------------------------------------- the notebook's check
def check_cell_source() -> str:
    return next(c.source for c in cells() if "params.from_namespace(globals())" in c.source)


def before_the_check() -> dict:
    """The namespace the check cell meets: the notebook's imports cell and parameters cell run in it."""
    namespace: dict = {}
    exec(next(c for c in cells() if c.cell_type == "code").source, namespace)
    exec(parameters_cell().source, namespace)
    return namespace


def test_a_name_papermill_injects_is_refused_with_the_valid_ones():
    namespace = before_the_check()
    exec("epoch = 5\nlrs = [1]", namespace)  # papermill -p epoch 5 -y 'lrs: [1]': it only warns
    with pytest.raises(ValueError) as e:
        exec(check_cell_source(), namespace)
    assert "unknown parameter 'epoch', 'lrs': papermill injected it or a parameter is misspelt" in str(e.value)
    assert "valid parameters: dataset, model, settings, replicas, epochs," in str(e.value)


def test_a_list_given_as_papermill_text_is_refused_with_the_y_hint():
    assert _resolve_type('["CONTROL"]') == '["CONTROL"]'  # what `papermill -p settings '["CONTROL"]'` passes
    namespace = before_the_check()
    namespace["settings"] = '["CONTROL"]'
    with pytest.raises(ValueError) as e:
        exec(check_cell_source(), namespace)
    assert (
        """settings must be a list, got '["CONTROL"]' (papermill's -p passes text: give a list with """
        """-y 'settings: ["CONTROL"]')""" in str(e.value)
    )
    assert "-y 'lr_milestones: [...]'" in value_error("lr_milestones", "4")


def test_the_check_runs_again_after_run_all(tmp_path):
    """Run all (a tiny preset), then the check cell again and the parameters and check cells again, in one
    kernel: the later cells' names (cells, final, runs, ...) are not taken for unknown parameters."""
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += f'\nsettings = ["CONTROL"]\nreplicas = 1\nepochs = 1\nlr_milestones = []\noutput_root = "{tmp_path}"'
    index = next(i for i, c in enumerate(nb.cells) if c.source == check_cell_source())
    client = NotebookClient(nb, timeout=300, resources={"metadata": {"path": str(ROOT / "notebooks")}})
    with client.setup_kernel():
        for i, c in enumerate(nb.cells):
            if c.cell_type == "code":
                client.execute_cell(c, i)
        assert {"cells", "final", "runs", "specs"} <= set(_kernel_names(client, nb))
        again = [index, nb.cells.index(cell), index]
        outputs = [client.execute_cell(nb.cells[i], i).outputs for i in again]
    assert all(o["output_type"] != "error" for out in outputs for o in out), outputs
    assert outputs[-1][0]["text"] == "hardware label: cpu-1t\n"


def _kernel_names(client, nb) -> list[str]:
    probe = nbformat.v4.new_code_cell("import json; print(json.dumps(sorted(globals())))")
    nb.cells.append(probe)
    out = client.execute_cell(probe, len(nb.cells) - 1).outputs
    nb.cells.pop()
    return json.loads(out[0]["text"])


# ----------------------------------------------------------------------------- this machine
def test_a_cuda_device_on_a_machine_without_cuda_is_an_error_before_training(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device 'cuda': this machine has no CUDA device .*use device \"cpu\""):
        check_parameters({**valid(), "device": "cuda"})
    check_parameters({**valid(), "device": "cuda"}, check_machine=False)  # values meant for a GPU host
    with pytest.raises(ValueError, match="cannot derive the hardware label of device 'cuda'"):
        params.hardware({**valid(), "device": "cuda"})


def test_threads_above_the_cores_warn_before_training(monkeypatch):
    monkeypatch.setattr(params.os, "sched_getaffinity", lambda pid: {0, 1})
    with pytest.warns(UserWarning, match="threads=4 is more than the 2 CPU cores"):
        check_parameters({**valid(), "threads": 4})
    check_parameters({**valid(), "threads": 2})  # no warning: warnings are errors in this suite


def test_a_cpu_capability_the_kernel_was_not_started_with_is_an_error_before_training(monkeypatch):
    """torch reads ATEN_CPU_CAPABILITY once per process: a notebook run by hand in a kernel started
    without it would train with another instruction set under the asked-for label."""
    monkeypatch.setattr(environment, "supported_cpu_capabilities", lambda: ("default", "avx2", "avx512"))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    with pytest.raises(ValueError, match=r"dispatches to AVX512, not AVX2 .*with ATEN_CPU_CAPABILITY=avx2"):
        check_parameters({**valid(), "cpu_capability": "avx2"})
    check_parameters({**valid(), "cpu_capability": "avx2"}, check_machine=False)  # values meant for a job
    assert params.hardware({**valid(), "cpu_capability": "avx2", "threads": 2}) == "cpu-2t-avx2"
    assert params.hardware({**valid(), "threads": 2}) == "cpu-2t"  # the committed store's labels
    monkeypatch.setattr(environment, "supported_cpu_capabilities", lambda: ("default", "avx2"))
    with pytest.raises(ValueError, match=r"cpu_capability 'avx512': this machine's CPU \(.*\) does not support it"):
        check_parameters({**valid(), "cpu_capability": "avx512"})


def test_from_namespace_returns_the_checked_values_read_only():
    namespace = before_the_check()
    values = from_namespace(namespace)
    assert dict(values) == valid()
    with pytest.raises(TypeError):
        values["epochs"] = 1  # type: ignore[index]


def test_unknown_names_are_the_plain_data_that_is_no_parameter():
    """What papermill or a parameter line can bind is suspect; objects later cells bind are not."""
    namespace = {
        "epochs": 3,
        "epoch": 3,
        "lrs": [1, 2.5],
        "opts": {"a": None},
        "_mine": 1,
        "In": ["x"],
        "Out": {},
        "frame": pd.DataFrame(),
        "math": math,
        "specs": {"CONTROL": train.ReplicaSpec()},
        "fn": len,
    }
    assert params.unknown_names(namespace, PARAMETERS) == {"epoch", "lrs", "opts"}


def test_the_recipe_as_a_whole_is_checked_before_any_data_is_loaded():
    values = {**params.RECIPE_DEFAULTS, "dataset": "mnist1d", "model": "smallcnn", "epochs": 3}
    values["snapshot_epochs"] = [2, 5]
    errors = params.recipe_errors(values)
    assert errors == [
        "snapshot_epochs must lie in 1 .. epochs (3), got [5] past the last epoch",
        "dataset 'mnist1d': model 'smallcnn' cannot take 1D signals (N, C, L); valid models for them: "
        "cnn1d, cnn1d_bn, mlp1d",
    ]
    assert params.recipe_errors({**values, "model": "cnn1d", "snapshot_epochs": [1, 3]}) == []
    assert params.recipe_errors({**values, "model": "cnn1d", "snapshot_epochs": [2, 2]}) == [
        "snapshot_epochs must not repeat an epoch, got [2, 2]"
    ]
    whole = {**values, "settings": ["ALGO"], "replicas": 2, "output_root": "", "snapshot_epochs": []}
    with pytest.raises(ValueError, match="cannot take 1D signals"):
        params.check_parameters(whole, check_machine=False)
