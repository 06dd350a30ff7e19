"""Tests for nnrandomness.overhead: configurations, timing statistics, the sweep rows, the store and the CLI.

Timings themselves are not asserted (they depend on the machine and its load); what is
asserted is how they are taken and summarised. Model runs use SmallCNN at 8x8, batch 4.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from nnrandomness import cli, models, overhead
from nnrandomness.overhead import CONFIGURATIONS, Workload, timing

REPO = Path(__file__).resolve().parents[1]
TINY = Workload(
    "smallcnn", image_size=8, batch_size=4, num_classes=10, device="cpu", threads=1, steps=2, warmup=1, repeats=2
)


def _flags() -> dict:
    """The backend state, read from torch's public API."""
    return {
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "fill": bool(torch.utils.deterministic.fill_uninitialized_memory),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "matmul": torch.backends.cuda.matmul.fp32_precision,
        "conv": torch.backends.cudnn.conv.fp32_precision,
        "threads": torch.get_num_threads(),
        "workspace": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


# ----------------------------------------------------------------------------- configurations
# name -> (torch flag, fill, cudnn deterministic, cudnn benchmark, TF32, workspace, compile)
EXPECTED = {
    "baseline": (False, False, False, True, False, None, False),
    "det_full": (True, True, True, False, False, None, False),
    "det_no_fill": (True, False, True, False, False, None, False),
    "cudnn_det_only": (False, False, True, False, False, None, False),
    "benchmark_off_only": (False, False, False, False, False, None, False),
    "workspace": (False, False, False, True, False, ":4096:8", False),
    "tf32": (False, False, False, True, True, None, False),
    "bf16": (False, False, False, True, False, None, False),
    "compile": (False, False, False, True, False, None, True),
    "det_compile": (True, True, True, False, False, None, True),
}


def test_every_configuration_is_listed_here():
    assert set(EXPECTED) == set(CONFIGURATIONS)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_configuration_sets_the_flags_it_claims_and_restores_them(name, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    if name == "workspace" and torch.cuda.is_available() and torch.cuda.is_initialized():
        pytest.skip("CUDA already started in this worker: the refusal is tested by test_cublas_workspace_is_refused...")
    before = _flags()
    det, fill, cudnn_det, bench, tf32, workspace, compiled = EXPECTED[name]
    with overhead.apply_configuration(CONFIGURATIONS[name], "fp32", threads=1) as record:
        eff = record["effective"]
        assert (eff["deterministic_algorithms"], eff["fill_uninitialized_memory"]) == (det, fill)
        assert (eff["cudnn_deterministic"], eff["cudnn_benchmark"]) == (cudnn_det, bench)
        precision = "tf32" if tf32 else "ieee"
        assert eff["cuda_matmul_fp32_precision"] == eff["cudnn_conv_fp32_precision"] == precision
        assert (eff["CUBLAS_WORKSPACE_CONFIG"], eff["compile"], eff["num_threads"]) == (workspace, compiled, 1)
        assert record["requested"]["autocast_bf16"] == (name == "bf16")
        # The record is what torch reports now, not what was asked for.
        assert _flags()["deterministic"] == det and _flags()["cudnn_deterministic"] == cudnn_det
    assert _flags() == before


def test_unknown_configuration_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown configuration 'fast'; valid configurations: baseline, det_full"):
        overhead.measure(TINY, ["fast"])


# ----------------------------------------------------------------------------- statistics
def test_overhead_formula_on_hand_made_timings():
    assert overhead.overhead_pct(150.0, 100.0) == pytest.approx(50.0)
    assert overhead.overhead_pct(100.0, 100.0) == 0.0
    assert overhead.overhead_pct(80.0, 100.0) == pytest.approx(-20.0)
    assert overhead.overhead_pct(846.0, 100.0) == pytest.approx(746.0)  # the paper's P100 maximum
    s = overhead.summarize([5.0, 1.0, 4.0, 2.0, 3.0])
    assert s == {"n_steps": 5, "median_ms": 3.0, "q1_ms": 2.0, "q3_ms": 4.0}
    with pytest.raises(ValueError, match="no step times"):
        overhead.summarize([])


def test_unsupported_op_is_parsed_from_torchs_message():
    msg = (
        "adaptive_avg_pool2d_backward_cuda does not have a deterministic implementation, but you set "
        "'torch.use_deterministic_algorithms(True)'. You can turn off determinism just for this operation..."
    )
    assert overhead.unsupported_op(RuntimeError(msg)) == "adaptive_avg_pool2d_backward_cuda"
    assert overhead.unsupported_op(RuntimeError("CUDA out of memory")) is None


def test_cpu_steps_are_timed_one_by_one_with_perf_counter(monkeypatch):
    # A fake clock that advances 1 ms per reading: every step then measures exactly 1 ms. The block
    # runs here (time_block), not in a fresh process, so that the fake clock reaches it.
    ticks = itertools.count()
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(ticks) * 1e-3)
    calls = []
    times = timing._time_steps(lambda: calls.append(1), 4, torch.device("cpu"))
    assert times == pytest.approx([1.0] * 4) and len(calls) == 4
    block = overhead.time_block(TINY, "det_full")
    assert block["status"] == "ok" and block["times_ms"] == pytest.approx([1.0] * TINY.steps)  # warm-up not timed
    assert block["record"]["effective"]["deterministic_algorithms"] is True and block["pid"] == os.getpid()
    assert block["kernel_ms"] > 0 and block["n_kernels"] > 0 and block["peak_host_mb"] > 0
    assert block["peak_device_mb"] is None and block["model_changes"] is None  # CPU; no VGG
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the block


@pytest.fixture(scope="module")
def fresh_blocks():
    """Two rounds of baseline, det_full and workspace on the CPU, each block in a fresh process."""
    return overhead.time_configurations(TINY, ["baseline", "det_full", "workspace"])


def test_every_block_runs_in_a_fresh_process_interleaved(fresh_blocks):
    blocks = sorted((b for res in fresh_blocks.values() for b in res["blocks"]), key=lambda b: b["order"])
    names = [n for b in blocks for n, res in fresh_blocks.items() if b in res["blocks"]]
    assert names == ["baseline", "det_full", "workspace"] * TINY.repeats
    assert [b["round"] for b in blocks] == [0, 0, 0, 1, 1, 1]
    pids = [b["pid"] for b in blocks]
    assert len(set(pids)) == len(blocks) and os.getpid() not in pids  # one new process per block
    assert all(len(b["times_ms"]) == TINY.steps for b in blocks)
    assert not torch.are_deterministic_algorithms_enabled()  # nothing was set in this process


def test_each_child_gets_its_configurations_workspace_before_cuda_starts(fresh_blocks, monkeypatch):
    # workspace needs CUBLAS_WORKSPACE_CONFIG before CUDA starts: each child sets it first thing.
    # Its knob does nothing on a CPU (measure records it as not applicable); the plumbing is the same.
    effective = {
        n: [b["record"]["effective"]["CUBLAS_WORKSPACE_CONFIG"] for b in r["blocks"]] for n, r in fresh_blocks.items()
    }
    assert effective["workspace"] == [":4096:8", ":4096:8"]
    here = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    assert effective["baseline"] == effective["det_full"] == [here, here]  # the others: this process's value
    assert timing._child_env(CONFIGURATIONS["det_full"]) == {"CUBLAS_WORKSPACE_CONFIG": here}
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    assert timing._child_env(CONFIGURATIONS["baseline"]) == {"CUBLAS_WORKSPACE_CONFIG": ":16:8"}


def test_measure_rows_on_the_cpu(fresh_blocks, monkeypatch):
    # The rows of the fixture's blocks (measure = time_configurations + rows_from_results).
    monkeypatch.setattr(timing, "time_configurations", lambda w, names, model_factory=None: fresh_blocks)
    rows = pd.DataFrame(overhead.measure(TINY, ["det_full", "workspace", "tf32", "cudnn_det_only"]))
    assert list(rows.columns) == overhead.ROW_COLUMNS
    # The baseline is always timed (first) even when not asked for.
    assert list(rows["configuration"]) == ["baseline", "det_full", "workspace", "tf32", "cudnn_det_only"]
    status = dict(zip(rows["configuration"], rows["status"]))
    assert status == {
        "baseline": "ok",
        "det_full": "ok",
        "workspace": "not_applicable",
        "tf32": "not_applicable",
        "cudnn_det_only": "not_applicable",
    }
    ok = rows[rows["status"] == "ok"]
    assert (ok["q1_ms"] <= ok["median_ms"]).all() and (ok["median_ms"] <= ok["q3_ms"]).all()
    assert (ok["n_steps"] == 4).all() and (ok["processes"] == 2).all() and not rows["same_process"].any()
    base = ok["median_ms"].iloc[0]
    assert ok["overhead_pct"].iloc[1] == pytest.approx((ok["median_ms"].iloc[1] / base - 1) * 100)
    assert (ok["kernel_ms"] > 0).all() and ok["kernel_overhead_pct"].iloc[0] == 0.0
    assert (ok["peak_host_mb"] > 0).all() and ok["peak_device_mb"].isna().all()
    assert json.loads(ok["flags"].iloc[1])["effective"]["deterministic_algorithms"] is True
    assert rows["hardware"].unique().tolist() == ["cpu-1t"] and rows["threads"].unique().tolist() == [1]
    assert rows[rows["status"] == "not_applicable"]["median_ms"].isna().all()
    assert (rows.loc[rows["status"] == "not_applicable", "processes"] == 0).all()


def _block(times, kernel, status="ok", op=None, peak=100.0):
    return {
        "status": status,
        "times_ms": times,
        "kernel_ms": kernel,
        "n_kernels": 7,
        "peak_device_mb": peak,
        "peak_host_mb": 2 * peak,
        "record": {"effective": {}},
        "unsupported_op": op,
        "error": f"RuntimeError: {op} does not have a deterministic implementation" if op else None,
        "model_changes": None,
        "pid": 1,
    }


def test_rows_from_hand_made_blocks_and_the_det_compile_note():
    gpu = dataclasses.replace(TINY, device="cuda")  # rows only: nothing runs on it
    results = {
        "baseline": {"status": "ok", "blocks": [_block([10, 10], 8.0), _block([10, 12], 10.0)]},  # median 10, kernel 9
        "det_full": {"status": "ok", "blocks": [_block([20, 21], 18.0, peak=150), _block([19, 20], 18.0)]},
        "det_compile": {"status": "ok", "blocks": [_block([11, 11], 9.0), _block([11, 12], 9.0)]},
        "benchmark_off_only": {"status": "unsupported", "blocks": [_block([], None, "unsupported", "max_unpool")]},
    }
    names = list(results)
    rows = {r["configuration"]: r for r in timing.rows_from_results(gpu, names, results, [])}
    assert rows["det_full"]["median_ms"] == 20.0 and rows["det_full"]["overhead_pct"] == pytest.approx(100.0)
    assert rows["det_full"]["kernel_ms"] == 18.0 and rows["det_full"]["kernel_overhead_pct"] == pytest.approx(100.0)
    assert rows["baseline"]["kernel_ms"] == 9.0 and rows["baseline"]["processes"] == 2
    assert rows["det_full"]["peak_device_mb"] == 150 and rows["det_full"]["peak_host_mb"] == 300  # largest block
    assert rows["benchmark_off_only"]["unsupported_op"] == "max_unpool" and rows["benchmark_off_only"]["n_steps"] == 0
    # det_compile's quartiles (11, 11.25) lie below det_full's (19.75, 20.25): noted, with the change.
    assert rows["det_compile"]["note"] == "det_compile's step -45.0 % against det_full's (interquartile ranges apart)"
    assert rows["det_full"]["note"] is None
    # Overlapping ranges: nothing to note. A different status: named, with the op.
    close = dict(rows["det_full"], q1_ms=19.0, q3_ms=22.0, median_ms=21.0)
    assert overhead.compile_note(rows["det_full"], close) is None
    unsupported = dict(rows["det_full"], status="unsupported", unsupported_op="adaptive_avg_pool2d_backward_cuda")
    assert overhead.compile_note(unsupported, rows["det_full"]) == (
        "det_compile ok where det_full is unsupported (adaptive_avg_pool2d_backward_cuda)"
    )


def test_kernel_time_sums_gpu_kernels_and_cpu_self_time():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def ev(device, start, end, activity="kernel", name="k", self_cpu=0.0):
        rng = SimpleNamespace(start=start, end=end)
        return SimpleNamespace(
            device_type=device, time_range=rng, activity_type=activity, name=name, is_async=False,
            self_cpu_time_total=self_cpu,
        )  # fmt: skip

    events = [
        ev(DeviceType.CPU, 0, 500, "cpu_op", "aten::conv2d", self_cpu=300.0),
        ev(DeviceType.CUDA, 10, 110, name="implicit_gemm"),  # 100 us
        ev(DeviceType.CUDA, 100, 150, name="implicit_gemm"),  # 50 us, overlapping: counted too
        ev(DeviceType.CUDA, 200, 1200, "gpu_memcpy", "Memcpy HtoD"),  # a copy, not a kernel
        ev(DeviceType.CUDA, 300, 325, name="fill_kernel"),  # 25 us
    ]
    assert overhead.kernel_time(events, "cuda") == (pytest.approx(0.175), 2)
    assert overhead.kernel_time(events, "cpu") == (pytest.approx(0.3), 1)
    # A real profile on the CPU: the operators' own time is positive and below the profiled wall time.
    x = torch.randn(64, 64)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        (x @ x).relu().sum()
        wall_ms = (time.perf_counter() - t0) * 1e3
    total, names = overhead.kernel_time(prof.events(), "cpu")
    assert 0 < total <= wall_ms and names >= 3  # matmul (mm), relu, sum


class UnpoolNet(nn.Module):
    """MaxUnpool2d has no deterministic implementation on any device: torch raises on the CPU too."""

    def __init__(self, num_classes, in_channels, generator):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2)
        self.head = nn.Linear(4, num_classes)
        models.glorot_init(self, generator)

    def forward(self, x):
        h, idx = self.pool(self.conv(x))
        return self.head(self.unpool(h, idx).mean((2, 3)))


def test_an_op_without_deterministic_implementation_is_recorded_not_fatal():
    # In this process (time_block): the recording is what is tested; fresh processes are tested above.
    block = overhead.time_block(TINY, "det_full", model_factory=UnpoolNet)
    assert block["status"] == "unsupported" and block["unsupported_op"] == "max_unpooling2d_forward_out"
    assert "does not have a deterministic implementation" in block["error"] and block["times_ms"] == []
    assert overhead.time_block(TINY, "bf16", model_factory=UnpoolNet)["status"] == "ok"
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the failure
    with pytest.raises(ValueError, match="cannot be sent to a fresh process"):
        overhead.time_configurations(TINY, ["baseline"], model_factory=lambda n, c, g: UnpoolNet(n, c, g))


def test_a_child_that_dies_is_an_error_not_a_hang():
    with pytest.raises(RuntimeError, match="the timing process died"):
        overhead.run_fresh(os._exit, 3)


def test_vgg_pool_is_an_identity_where_it_is_one():
    # Keras' VGG flattens block5_pool; torchvision's adaptive 7x7 pool is an identity on a 7x7 map, and
    # its backward has no deterministic CUDA kernel. No pool op may run there; elsewhere the pool does.
    pool = models.KerasVGGPool((7, 7))
    seven, one = torch.randn(2, 3, 7, 7), torch.randn(2, 3, 1, 1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = pool(seven)
    assert out is seven and not [e.name for e in prof.events() if "adaptive" in e.name]
    assert torch.equal(pool(one), nn.AdaptiveAvgPool2d((7, 7))(one))  # 1x1 enlarged to 7x7, as before
    assert torch.equal(nn.AdaptiveAvgPool2d((7, 7))(seven), seven)  # what makes it an identity
    vgg = models.build_model("vgg16", 10, 3, generator=torch.Generator().manual_seed(0))
    assert isinstance(vgg.avgpool, models.KerasVGGPool)
    assert overhead.model_changes(vgg, torch.zeros(1, 3, 224, 224)).endswith("applied (7x7 feature map)")
    assert overhead.model_changes(vgg, torch.zeros(1, 3, 32, 32)).endswith("enlarges a 1x1 feature map")
    assert overhead.model_changes(models.build_model("smallcnn", 10, 3, generator=torch.Generator()), seven) is None


@pytest.mark.requires_gpu
def test_on_cuda_every_configuration_runs_in_its_own_process_with_kernel_time_and_memory(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.cuda.init()  # this process's CUDA: the children's are their own
    with (
        pytest.raises(RuntimeError, match="CUBLAS_WORKSPACE_CONFIG must be set before CUDA initialises"),
        overhead.apply_configuration(CONFIGURATIONS["workspace"]),
    ):
        pass
    gpu = Workload("smallcnn", 32, 8, 10, "cuda", steps=3, warmup=2, repeats=2)
    names = ["workspace", "benchmark_off_only", "det_full"]
    rows = pd.DataFrame(overhead.measure(gpu, names)).set_index("configuration")
    assert rows["status"].to_dict() == dict.fromkeys(["baseline", *names], "ok")
    assert (rows["processes"] == 2).all()
    assert json.loads(rows.loc["workspace", "flags"])["effective"]["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert json.loads(rows.loc["benchmark_off_only", "flags"])["effective"]["cudnn_benchmark"] is False
    assert ((rows["kernel_ms"] > 0) & (rows["kernel_ms"] <= rows["median_ms"] * 1.5)).all()
    assert (rows["peak_device_mb"] > 0).all()


@pytest.mark.requires_gpu
def test_on_cuda_vgg16_at_224_is_deterministic_capable():
    gpu = Workload("vgg16", 224, 2, 10, "cuda", steps=1, warmup=1, repeats=1)
    rows = pd.DataFrame(overhead.measure(gpu, ["det_full"])).set_index("configuration")
    assert rows.loc["det_full", "status"] == "ok", rows.loc["det_full", "error"]
    assert rows.loc["det_full", "model_changes"].endswith("applied (7x7 feature map)")


# ----------------------------------------------------------------------------- store, plan, CLI
def _frame() -> pd.DataFrame:
    row = dict.fromkeys(overhead.ROW_COLUMNS)
    row.update(model="smallcnn", device="cpu", hardware="cpu-1t", configuration="baseline", status="ok", median_ms=1.0)
    return pd.DataFrame([row], columns=overhead.ROW_COLUMNS)


def test_results_are_written_with_the_manifest_last(tmp_path, monkeypatch):
    (d,) = overhead.write_results(_frame(), tmp_path, env={"test": True})
    assert d == tmp_path / "overhead" / "cpu-1t"
    rows, manifest = overhead.read_results(tmp_path, "cpu-1t")
    assert rows["median_ms"].tolist() == [1.0] and manifest["environment"] == {"test": True}
    assert manifest["configurations"] == {"baseline": CONFIGURATIONS["baseline"].description}
    # Interrupted before the manifest's rename: the old manifest is gone, the new one not there.
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError, match="killed"):
        overhead.write_results(_frame(), tmp_path, env={})
    assert (d / overhead.RESULTS).exists() and not (d / overhead.MANIFEST).exists()
    with pytest.raises(ValueError, match="no manifest"):
        overhead.read_results(tmp_path, "cpu-1t")


def test_a_damaged_result_is_refused(tmp_path):
    (d,) = overhead.write_results(_frame(), tmp_path, env={})
    pd.concat([_frame(), _frame()]).to_parquet(d / overhead.RESULTS)
    with pytest.raises(ValueError, match="fails its SHA-256 checksum"):
        overhead.read_results(tmp_path, "cpu-1t")


@pytest.mark.parametrize(
    "manifest, message",
    [
        ("null", "malformed manifest"),
        ("[1, 2]", "malformed manifest"),
        ('{"files": null}', "malformed manifest"),
        ('{"files": {"results.parquet": 3}}', "malformed manifest"),
        ("{not json", "unreadable manifest"),
    ],
)
def test_a_malformed_manifest_is_refused_by_name(tmp_path, manifest, message):
    (d,) = overhead.write_results(_frame(), tmp_path, env={})
    (d / overhead.MANIFEST).write_text(manifest)
    with pytest.raises(ValueError, match=message) as info:
        overhead.read_results(tmp_path, "cpu-1t")
    assert str(d / overhead.MANIFEST) in str(info.value)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_plan_file_is_valid(device):
    plan = overhead.load_plan(REPO / "plans" / "overhead.yaml", device)
    workloads = plan.workloads(device)  # validates models, sizes and configurations
    assert len(workloads) == len(plan.models) * len(plan.threads) * len(plan.precisions)
    assert {"vgg16", "inception_v3", "mediumcnn_k7", "smallcnn", "resnet18"} <= set(plan.models)
    assert {"baseline", "det_full", "det_no_fill"} <= set(plan.configurations)
    if device == "cuda":
        assert (plan.image_size, plan.batch_size, plan.num_classes) == (224, 128, 1000)  # the paper's


def test_plan_errors_name_the_bad_key(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("devices:\n  cpu:\n    image_sise: 32\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['image_sise'\]; valid keys: .*image_size"):
        overhead.load_plan(path, "cpu")
    with pytest.raises(ValueError, match="has no section devices.cuda; it has: cpu"):
        overhead.load_plan(path, "cuda")


def test_cli_runs_a_tiny_sweep_and_writes_it(tmp_path, capsys):
    tiny = "--models smallcnn --configurations baseline,det_full,tf32 --image-size 8 --batch-size 4 --num-classes 10"
    once = "--steps 1 --warmup 0 --repeats 1 --threads 1"
    code = cli.main(["overhead", *tiny.split(), *once.split(), "--root", str(tmp_path)])
    assert code == 0
    assert "det_full" in capsys.readouterr().out
    rows, manifest = overhead.read_results(tmp_path, "cpu-1t")
    assert rows["configuration"].tolist() == ["baseline", "det_full", "tf32"]
    assert manifest["plan"]["steps"] == 1 and manifest["environment"]["torch"] == torch.__version__


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--models", "smallcnn,nosuchnet", "unknown model 'nosuchnet'; valid models: smallcnn"),
        ("--configurations", "baseline,turbo", "unknown configuration 'turbo'; valid configurations: baseline"),
        ("--image-size", "8x8", "--image-size: cannot parse '8x8'"),
    ],
)
def test_cli_errors_are_clear(flag, value, message, capsys, tmp_path):
    assert cli.main(["overhead", flag, value, "--root", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "overhead").exists()


# ----------------------------------------------------------------------------- the notebook
# A preset small enough that a real kernel runs it in seconds.
NOTEBOOK_TINY = (
    "--models smallcnn --configurations baseline,det_full --image-size 8 --batch-size 4 --num-classes 10 "
    "--steps 1 --warmup 0 --repeats 1 --threads 1"
).split()


def test_the_notebook_defines_exactly_its_parameters():
    from nnrandomness import plan

    assert plan.notebook_parameter_names(REPO / overhead.NOTEBOOK) == list(overhead.NOTEBOOK_PARAMETERS)


def test_cli_runs_the_notebook_with_papermill_and_writes_its_results(tmp_path, capsys):
    root = tmp_path / "runs"
    code = cli.main(
        [
            "overhead",
            "--plan",
            str(REPO / "plans" / "overhead.yaml"),
            "--device",
            "cpu",
            "--notebook",
            "--notebook-path",
            str(REPO / overhead.NOTEBOOK),
            *NOTEBOOK_TINY,
            "--root",
            str(root),
        ]
    )
    assert code == 0, capsys.readouterr().err
    rows, manifest = overhead.read_results(root, "cpu-1t")  # checks the Parquet file's SHA-256
    assert rows["configuration"].tolist() == ["baseline", "det_full"] and set(rows["status"]) == {"ok"}
    assert manifest["plan"]["steps"] == 1 and manifest["environment"]["torch"] == torch.__version__
    executed = json.loads(overhead.executed_path(root, "cpu-1t").read_text())
    params = executed["metadata"]["papermill"]["parameters"]
    assert params["models"] == ["smallcnn"] and params["output_root"] == str(root.resolve())
    assert "start_time" not in executed["metadata"]["papermill"]  # run-dependent metadata stripped


def test_an_unknown_model_fails_in_the_notebooks_validation_cell(tmp_path):
    from papermill.exceptions import PapermillExecutionError

    params = overhead.notebook_parameters(overhead.Plan(models=("smallcnn", "nosuchnet")), "cpu", 1, "fp32", tmp_path)
    params["modles"] = ["smallcnn"]  # a misspelt parameter: papermill only warns about it
    with pytest.raises(PapermillExecutionError) as info:
        overhead.run_notebook(params, notebook=REPO / overhead.NOTEBOOK)
    assert info.value.ename == "ValueError"
    assert "unknown model 'nosuchnet'" in info.value.evalue and "'modles'" in info.value.evalue
    assert overhead.executed_path(tmp_path, "cpu-1t").is_file()  # the failed notebook is kept
    assert not (tmp_path / "overhead").exists()  # nothing was timed or written


def test_the_notebook_check_reads_its_namespace_and_tolerates_a_rerun(tmp_path):
    values = overhead.notebook_parameters(overhead.Plan(models=("smallcnn",)), "cpu", 1, "fp32", tmp_path)
    # After "Run all" the namespace also holds what later cells bound: frames, plans, modules.
    after_run_all = {**values, "rows": pd.DataFrame({"a": [1]}), "sweep_plan": overhead.Plan(), "overhead": overhead}
    assert overhead.notebook_plan_from(after_run_all).models == ("smallcnn",)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) 'step': papermill injected it"):
        overhead.notebook_plan_from({**values, "step": 3})  # `-p step 3` for steps


def test_cli_refuses_a_missing_notebook(tmp_path, capsys):
    code = cli.main(
        [
            "overhead",
            "--notebook",
            "--notebook-path",
            str(tmp_path / "none.ipynb"),
            *NOTEBOOK_TINY,
            "--root",
            str(tmp_path),
        ]
    )
    assert code == 2 and f"no overhead notebook at {tmp_path / 'none.ipynb'}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- where sweeps go
def _cli_defaults() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    overhead.add_arguments(parser)
    return parser.parse_args([])


def test_the_notebook_path_comes_in_relative_to_the_working_directory():
    # Like a plan's `notebook:`, not found through the package's own location (an installed package has none).
    path = _cli_defaults().notebook_path
    assert path == overhead.NOTEBOOK and not path.is_absolute() and (REPO / path).is_file()


def test_the_cli_writes_where_the_cost_chapter_reads():
    """The README's sweep command (no --root) must write the store the chapter shows, not the run store."""
    cli_root = REPO / _cli_defaults().root  # the CLI runs from the repository root
    source = (REPO / "notebooks" / "30_determinism_cost.py").read_text()
    parameter = re.search(r"^overhead_root = (.+?)  #", source, re.MULTILINE).group(1)
    assert 'overhead.store_root(overhead_root, repository="..")' in source  # the chapter runs in notebooks/
    chapter_root = overhead.store_root(ast.literal_eval(parameter), repository=REPO / "notebooks" / "..")
    assert chapter_root.resolve() == cli_root.resolve() == (REPO / overhead.DEFAULT_ROOT).resolve()
    assert (cli_root / "overhead" / "cpu-1t" / overhead.MANIFEST).is_file()  # the committed sweep is there
    assert overhead.store_root("elsewhere", repository="..") == Path("elsewhere")


# ----------------------------------------------------------------------------- what the chapter shows
def _sweep_rows() -> pd.DataFrame:
    """A hand-made sweep: baseline 10/20/40 ms, det_full +10 %/+50 %/unsupported, det_no_fill +5 % ..."""
    rows = []
    for model, base, det, no_fill in [
        ("mediumcnn_k5", 20.0, 30.0, 21.0),
        ("smallcnn", 10.0, 11.0, 10.5),
        ("mediumcnn_k3", 40.0, None, 42.0),
    ]:
        det_status = "ok" if det else "unsupported"
        for configuration, median, status in [
            ("baseline", base, "ok"),
            ("det_full", det, det_status),
            ("det_no_fill", no_fill, "ok"),
            ("tf32", None, "not_applicable"),
        ]:
            row = dict.fromkeys(overhead.ROW_COLUMNS)
            row.update(
                model=model,
                configuration=configuration,
                status=status,
                device="cpu",
                hardware="cpu-1t",
                median_ms=median,
                q1_ms=median and median - 1,
                q3_ms=median and median + 1,
                n_steps=15,
                batch_size=8,
                image_size=32,
                num_classes=1000,
                overhead_pct=overhead.overhead_pct(median, base) if median else np.nan,
            )
            if status == "unsupported":
                row.update(unsupported_op="max_unpool", error="RuntimeError: max_unpool does not have ...")
            rows.append(row)
    return pd.DataFrame(rows, columns=overhead.ROW_COLUMNS)


def test_overhead_table_and_the_relative_iqr():
    results = _sweep_rows()
    timed = overhead.timed_rows(results).set_index(["model", "configuration"])
    assert set(timed.index) == {
        ("mediumcnn_k5", "det_full"),
        ("smallcnn", "det_full"),
        ("mediumcnn_k5", "det_no_fill"),
        ("smallcnn", "det_no_fill"),
        ("mediumcnn_k3", "det_no_fill"),
    }
    # The configuration's quartiles relative to the baseline's median: 29/20 and 31/20 ms.
    assert timed.loc[
        ("mediumcnn_k5", "det_full"), ["overhead_lo", "overhead_pct", "overhead_hi"]
    ].tolist() == pytest.approx([45.0, 50.0, 55.0])
    assert timed.loc[("smallcnn", "det_full"), "baseline_ms"] == 10.0
    table = overhead.overhead_table(results)
    assert table.index.tolist() == ["smallcnn", "mediumcnn_k5", "mediumcnn_k3"]  # fastest baseline first
    assert table.columns.tolist() == ["baseline median (ms)", "det_full", "det_no_fill"]
    assert table.loc["smallcnn"].tolist() == [10.0, 10.0, 5.0] and np.isnan(table.loc["mediumcnn_k3", "det_full"])
    assert overhead.model_order(results) == ["smallcnn", "mediumcnn_k5", "mediumcnn_k3"]


def test_cost_numbers_as_the_prose_glues_them():
    numbers = overhead.cost_numbers(_sweep_rows())
    assert numbers == {
        "n_models": "3",
        "n_steps": "15",
        "det_full_median": "+30.0 %",
        "det_full_min": "+10.0 %",
        "det_full_max": "+50.0 %",
        "det_no_fill_median": "+5.0 %",
        "baseline_iqr_median": "10 %",
        "baseline_iqr_max": "20 %",  # (q3 - q1) / median: 2/20, 2/10, 2/40
        "bf16_min": "n/a",
        "bf16_max": "n/a",  # not in this sweep
        "not_applicable": "tf32",
        "n_unsupported": "1",
    }


def test_measures_and_method_of_old_and_new_sweeps(tmp_path):
    old = _sweep_rows().drop(columns=overhead.ADDED_COLUMNS)  # as sweeps were written before the new columns
    (d,) = overhead.write_results(old, tmp_path, env={})
    assert_no_added(pd.read_parquet(d / overhead.RESULTS))
    read, _ = overhead.read_results(tmp_path, "cpu-1t")  # the old file reads, its new columns None
    assert list(read.columns) == overhead.ROW_COLUMNS and read["kernel_ms"].isna().all()
    assert overhead.method_note(read).startswith("every configuration was timed in one process")
    table = overhead.measures_table(read)
    assert table.columns.tolist() == ["step (ms)", "step overhead (%)"]  # nothing else was measured then
    assert table.loc[("mediumcnn_k5", "det_full")].tolist() == [30.0, 50.0]
    new = _sweep_rows().assign(processes=3, kernel_ms=4.0, peak_host_mb=512.25)
    new.loc[new.configuration == "det_full", "note"] = "det_compile ..."
    assert overhead.method_note(new) == (
        "every configuration, the baseline too, was timed in 3 fresh processes, one per interleaved block, "
        "each with its own untimed warm-up"
    )
    assert overhead.measures_table(new).loc[("smallcnn", "det_full")].to_dict() == {
        "step (ms)": 11.0,
        "step overhead (%)": 10.0,
        "kernel time (ms)": 4.0,
        "peak process memory (MiB)": 512.2,
        "processes": 3.0,
        "note": "det_compile ...",
    }


def assert_no_added(frame):
    assert not set(overhead.ADDED_COLUMNS) & set(frame.columns)


def test_kernel_size_numbers_and_captions():
    results = _sweep_rows()
    assert overhead.kernel_size_rows(results)["k"].tolist() == [5, 5, 3]
    assert overhead.kernel_size_numbers(results) == {
        "first": "3",
        "first_det_full": "n/a",
        "first_det_no_fill": "+5.0 %",
        "last": "5",
        "last_det_full": "+50.0 %",
        "last_det_no_fill": "+5.0 %",
    }
    manifest = {"environment": {"cpu_model": "Test CPU", "torch": "2.14.1"}}
    text = overhead.overhead_caption(results, manifest, "cpu-1t")
    assert text.endswith(
        "n = 15 timed steps per configuration; cpu-1t (Test CPU, torch 2.14.1); batch 8 at 32x32 pixels, 1000 classes."
    )
    assert overhead.kernel_size_caption(results, "cpu-1t").endswith("n = 15 timed steps per configuration; cpu-1t.")


def test_across_hardware_reads_every_complete_sweep(tmp_path):
    results = _sweep_rows()
    overhead.write_results(results, tmp_path, env={})
    overhead.write_results(
        results.assign(hardware="cuda-x", overhead_pct=results["overhead_pct"] * 2), tmp_path, env={}
    )
    (tmp_path / "overhead" / "cuda-y").mkdir()  # an interrupted sweep: no manifest, not read
    sweeps = overhead.read_all(tmp_path)
    assert list(sweeps) == overhead.hardware_labels(tmp_path) == ["cpu-1t", "cuda-x"]
    table = overhead.across_hardware(sweeps)
    assert table.columns.tolist() == [
        ("det_full", "cpu-1t"),
        ("det_full", "cuda-x"),
        ("det_no_fill", "cpu-1t"),
        ("det_no_fill", "cuda-x"),
    ]
    assert table.loc["mediumcnn_k5"].tolist() == [50.0, 100.0, 5.0, 10.0]
    assert overhead.hardware_note(sweeps) == "the store holds 2 label(s): cpu-1t, cuda-x."
    assert overhead.hardware_note(["cpu-1t"]).endswith(
        "Only one so far: the comparison fills in as GPU sweeps are added."
    )


def test_unsupported_ops_join_the_sweep_and_torchs_list():
    doc = """Sets whether ...
    The following normally-nondeterministic operations will throw a
    :class:`RuntimeError` when ``mode=True``:

        * :class:`torch.nn.AdaptiveAvgPool2d` when attempting to differentiate a CUDA tensor
        * :func:`torch.Tensor.put_` when ``accumulate=True``
        * :func:`torch.histc`
        * :class:`torch.nn.EmbeddingBag` when attempting to differentiate a CUDA tensor when
          ``mode='max'``
        * :class:`torch.nn.CTCLoss` when:
            - a CUDA tensor
            - ``reduction='none'``

    In addition, several operations fill uninitialized memory ...
    """
    documented = overhead.documented_ops(doc, "2.14.1+cpu")
    assert documented["op"].tolist() == [
        "torch.nn.AdaptiveAvgPool2d",
        "torch.Tensor.put_",
        "torch.histc",
        "torch.nn.EmbeddingBag",
        "torch.nn.CTCLoss",
    ]
    assert documented["condition"].tolist() == [
        "when attempting to differentiate a CUDA tensor",
        "when accumulate=True",
        "always",
        "when attempting to differentiate a CUDA tensor when mode='max'",
        "when: a CUDA tensor, reduction='none'",
    ]
    assert documented["device"].tolist() == ["CUDA", "any", "any", "CUDA", "CUDA"]
    assert set(documented["source"]) == {"torch 2.14.1 docs"}
    assert documented["in this study"].iloc[0].startswith("vgg16, vgg19: an identity on their 7x7 map at 224 px")
    table = overhead.unsupported_ops(_sweep_rows(), "cpu-1t", documented)
    assert table.index.tolist()[:2] == ["max_unpool", "torch.nn.AdaptiveAvgPool2d"]
    assert table.loc["max_unpool"].tolist() == [
        "RuntimeError: max_unpool does not have ...",
        "sweep (cpu-1t)",
        "cpu",
        "mediumcnn_k3",
    ]


def _report(l2_final, *, first_step=1, diverged=True, groups=True, flipped=(0, 1)):
    """A stand-in for locate.DivergenceReport with what the chapter reads from it."""
    from types import SimpleNamespace

    history = pd.DataFrame(
        {
            "epoch": [0, 1, 2],
            "weight_l2": [0.0, 1.23e-7, l2_final],
            "n_disagree": [0, 0, 3],
            "disagreement": [0.0, 0.0, 3 / 359],
        }
    )
    flips = pd.DataFrame(
        {
            "label": [0, 1],
            "n_test": [180, 179],
            "n_flipped": list(flipped),
            "accuracy_a": [0.9, 0.8],
            "accuracy_b": [0.9, 0.81234],
        }
    )
    return SimpleNamespace(
        history=history,
        flips=flips,
        subgroups=flips.assign(group=[1, 0]) if groups else None,
        steps_per_epoch=12,
        replicas={"A": {"threads": 1}, "B": {"threads": 2}},
        first_step=first_step,
        describe_first_op=lambda: "aten.mm.default in head.5 (backward)",
        first_op={"index": 54},
        traced_ops=137,
        differing_ops=9,
        first_step_parts={"loss": False, "gradients": True, "weights": True},
        initial_difference=["features.0.weight[3]"],
        diverged=diverged,
        steps_run=240,
    )


def test_divergence_numbers_and_caption():
    reports = {"threads": _report(2.1e-5), "ulp": _report(4.4e-4, first_step=0), "impl": _report(0.0, diverged=False)}
    numbers = overhead.divergence_numbers(reports)
    assert numbers == {
        "steps_per_epoch": "12",
        "threads_a": "1",
        "threads_b": "2",
        "threads_step": "1",
        "threads_op": "aten.mm.default in head.5 (backward)",
        "threads_op_index": "54 of 137",
        "threads_ops_differ": "9",
        "threads_parts": "gradients, weights",
        "threads_l2_epoch1": "1.2e-07",
        "threads_l2_final": "2.1e-05",
        "threads_flips": "3 of 359",
        "threads_flips_pct": "0.84%",
        "ulp_l2_epoch1": "1.2e-07",
        "ulp_l2_final": "4.4e-04",
        "ulp_flips": "3 of 359",
        "ulp_flips_pct": "0.84%",
        "ulp_weight": "features.0.weight[3]",
        "impl_result": "no divergence",
        "impl_steps": "240",
    }
    reports["impl"] = _report(1e-9, first_step=7)
    assert overhead.divergence_numbers(reports)["impl_result"] == "diverged at step 7"
    assert overhead.divergence_caption(reports, 20, "digits_groups", "smallcnn").endswith(
        "n = 2 replicas per factor, 240 steps; cpu, threads 1 (and 2 for replica B under threads); "
        "digits_groups/smallcnn."
    )


def test_flipped_table_keeps_the_rows_with_a_flip():
    table = overhead.flipped_table({"threads": _report(1e-5), "ulp": _report(1e-5, flipped=(2, 0))})
    assert table.index.names == ["factor", "label", "group"]
    assert table.index.tolist() == [("threads", 1, 0), ("ulp", 0, 1)]
    assert table.loc[("threads", 1, 0)].tolist() == [179, 1, 0.8, 0.812]  # rounded to 3 decimals
    no_groups = overhead.flipped_table({"threads": _report(1e-5, groups=False)})
    assert no_groups.index.names == ["factor", "label"]
    assert (
        overhead.flipped_table({"impl": _report(0.0, flipped=(0, 0))})
        == "no test prediction differs at the end for any factor"
    )


def test_the_package_exports_what_it_defines():
    """`from nnrandomness import overhead; overhead.X` keeps working for every public name of its modules."""
    modules = {"report", "results", "run", "sweeps", "timing"}
    public = {n for n in dir(overhead) if not n.startswith("_")} - modules
    assert set(overhead.__all__) == public
    assert callable(overhead.sweep) and callable(overhead.main)  # functions, not the submodules of similar names


# ----------------------------------------------------------------------------- the GPU smoke check
def _gpu_smoke():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_smoke", REPO / "benchmarks" / "gpu_smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_smoke_runs_its_cpu_checks_and_writes_its_summary(tmp_path):
    # The script as a GPU host runs it, in --cpu-dry mode: options, CIFAR files read back by the
    # loader, both plans through the runner's dry run, the summary's schema. GPU steps are skipped.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHON": sys.executable}
    proc = subprocess.run(
        [str(REPO / "benchmarks" / "gpu_smoke.sh"), "--cpu-dry", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = Path(proc.stdout.strip().splitlines()[-1].removeprefix("summary: "))
    assert path.parent.parent == tmp_path and path.name == "summary.json"
    smoke = _gpu_smoke()
    summary = json.loads(path.read_text())
    assert smoke.summary_problems(summary) == [] and summary["mode"] == "cpu-dry" and summary["passed"] is True
    assert {s: summary["steps"][s]["status"] for s in smoke.STEPS} == dict.fromkeys(smoke.STEPS, "skipped")
    checks = summary["steps"]["cpu_checks"]
    assert checks["status"] == "ok" and checks["detail"]["cifar10_train"] == 2000
    assert "2 jobs" in checks["detail"]["dry_runs"]["paper"]["output"]
    assert "4 GPU slots (1 GPUs x 4 per GPU)" in checks["detail"]["dry_runs"]["jobs"]["output"]
    assert "--models smallcnn,resnet18,vgg16" in checks["detail"]["overhead_command"]


def test_gpu_smoke_refuses_bad_options_and_malformed_summaries(capsys):
    smoke = _gpu_smoke()
    for argv, message in [
        (["--skip", "overhead_subset,nosuch"], "--skip: unknown step(s) 'nosuch'; valid steps: requires_gpu_tests"),
        (["--gpu", "0,1"], "--gpu must be one GPU id (0, 1, ...), got '0,1'"),
        (["--jobs-per-gpu", "1"], "--jobs-per-gpu must be at least 2 (compared with 1), got 1"),
    ]:
        with pytest.raises(SystemExit) as info:
            smoke.parse_args(argv)
        assert info.value.code == 2 and message in capsys.readouterr().err
    assert smoke.parse_args(["--skip", "jobs_per_gpu"]).skip == ("jobs_per_gpu",)
    if not torch.cuda.is_available():
        assert smoke.main([]) == 2 and "use --cpu-dry" in capsys.readouterr().err
    assert smoke.summary_problems([]) == ["the summary is a list, not a mapping"]
    problems = smoke.summary_problems({"schema_version": "1", "steps": {"paper_like_plan": {"status": "done"}}})
    assert "'schema_version' is str, not int" in problems and "missing key 'passed'" in problems
    assert "step 'jobs_per_gpu' missing" in problems and any("'paper_like_plan' needs a status" in p for p in problems)


def test_gpu_smoke_reads_control_and_impl_from_manifests():
    smoke = _gpu_smoke()

    def manifest(setting, replica, weights, **extra):
        return {"spec": {"setting": setting, "replica": replica}, "weights_hash": weights, **extra}

    run = [manifest("CONTROL", 0, "a"), manifest("CONTROL", 1, "a"), manifest("IMPL", 0, "b"), manifest("IMPL", 1, "b")]
    assert smoke.control_check(run, run)["bit_identical"] is True
    assert (
        smoke.control_check(run, [manifest("CONTROL", 0, "a"), manifest("CONTROL", 1, "z")])["bit_identical"] is False
    )
    assert smoke.impl_check(run) == {
        "replicas": 2,
        "distinct_weights": 1,
        "kernels": "not recorded",
        "warning": "every IMPL replica is bit-identical",
    }
    recorded = [manifest("IMPL", 0, "b", kernels_hash="k1"), manifest("IMPL", 1, "c", kernels_hash="k2")]
    assert smoke.impl_check(recorded)["kernels"] == "2 distinct kernel set(s) over 2 replicas"
    assert smoke.impl_check(recorded)["warning"] is None
