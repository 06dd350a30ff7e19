"""GPU jobs (issue 10, items 2 and 4, and the dry run's estimate): a process per replica where the tooling
is the subject, the kernels and peak memory each replica records, the warning for IMPL replicas that came
out identical on CUDA, and the device time a dry run estimates per job.

The process-per-replica path runs on the CPU when asked ("always"): a child process is started for real.
What only a GPU can show (kernel names from CUPTI, peak device memory) is `requires_gpu`."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from nnrandomness import analysis, batch, cli, data, plan, store, train
from nnrandomness.cell import ReplicaProcessError, own_process, run_cell
from nnrandomness.plan import load_plan
from nnrandomness.train import KernelRecorder, ReplicaSpec, train_replica

ROOT = Path(__file__).resolve().parents[1]
TINY = ReplicaSpec(dataset="digits", model="smallcnn", epochs=2, lr=2e-3, threads=1)


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    """Two CONTROL replicas trained in this process: (store root, their rows)."""
    root = tmp_path_factory.mktemp("in-process")
    return root, run_cell(TINY, 2, root, "cpu-1t", progress=False, process_per_replica="never")


# ----------------------------------------------------------------------------- a process per replica
def test_control_in_child_processes_is_bit_identical_to_in_process_and_a_child_failure_is_raised(in_process, tmp_path):
    _, shared = in_process
    assert shared["process"].tolist() == ["shared", "shared"]
    # Replica 1 meets a checkpoint of another recipe: its process fails, and says why with its traceback.
    foreign = store.replica_dir(tmp_path, "cpu-1t", "digits", "smallcnn", "CONTROL", 1)
    train_replica(dataclasses.replace(TINY, replica=1, epochs=1), checkpoint_dir=foreign)
    with pytest.raises(ReplicaProcessError) as failure:
        run_cell(TINY, 2, tmp_path, "cpu-1t", progress=False, process_per_replica="always")
    message = str(failure.value)
    assert "replica 1 of cpu-1t/digits/smallcnn/CONTROL failed in its own process (exit code 1)" in message
    assert "Traceback (most recent call last)" in message and "belongs to another spec" in message
    # Replica 0 was trained before, in a process of its own, to the same bits as in this process.
    with pytest.warns(UserWarning, match="skipped 1 incomplete"):  # replica 1, left with its foreign checkpoint
        own = store.load_runs(tmp_path).replicas
    assert own["replica"].tolist() == [0] and own["process"].tolist() == ["own"]
    assert own["weights_hash"].iloc[0] == shared["weights_hash"].iloc[0]
    assert own["predictions_hash"].iloc[0] == shared["predictions_hash"].iloc[0]
    assert own["kernels_hash"].iloc[0] == shared["kernels_hash"].iloc[0]  # the same ops ran
    # Resumable: the complete replica is skipped (no process started for it: "never" would train in here).
    store.remove_replica(foreign)  # its foreign checkpoint with it
    before = (store.replica_dir(tmp_path, "cpu-1t", "digits", "smallcnn", "CONTROL", 0) / store.MANIFEST).read_bytes()
    rows = run_cell(TINY, [0], tmp_path, "cpu-1t", progress=False, process_per_replica="always")
    assert rows["weights_hash"].tolist() == [shared["weights_hash"].iloc[0]]
    assert (
        store.replica_dir(tmp_path, "cpu-1t", "digits", "smallcnn", "CONTROL", 0) / store.MANIFEST
    ).read_bytes() == before


@pytest.mark.parametrize(
    "device, setting, choice, expected",
    [
        ("cuda", "IMPL", "auto", True),
        ("cuda:1", "ALGO+IMPL", "auto", True),
        ("cuda", "CONTROL", "auto", False),  # deterministic kernels: one process gives the same bits
        ("cuda", "ALGO", "auto", False),
        ("cpu", "IMPL", "auto", False),  # the CPU's kernels are deterministic at a fixed thread count
        ("cpu", "CONTROL", "always", True),
        ("cuda", "IMPL", "never", False),
    ],
)
def test_which_cells_train_a_process_per_replica(device, setting, choice, expected):
    assert own_process(dataclasses.replace(TINY, device=device, setting=setting), choice) is expected


def test_a_bad_process_per_replica_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="process_per_replica must be auto, always or never, got 'yes'"):
        run_cell(TINY, 1, tmp_path, "cpu-1t", process_per_replica="yes")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- kernels and memory per replica
def test_the_manifest_records_peak_memory_and_the_ops_of_three_steps(in_process):
    root, rows = in_process
    manifest = json.loads((Path(rows["path"].iloc[0]) / store.MANIFEST).read_text())
    assert manifest["resources"]["process"] == "shared"
    assert manifest["resources"]["peak_device_bytes"] is None  # the CPU: no device memory of its own
    assert manifest["resources"]["peak_host_bytes"] > 100 * 2**20  # torch alone holds more than 100 MB
    kernels = manifest["kernels"]
    assert kernels["kind"] == "ops" and kernels["steps"] == train.PROFILE_STEPS
    assert kernels["names"] == sorted(set(kernels["names"]))
    # The forward and backward of the SmallCNN's convolutions, and the fused Adam step, were seen.
    assert {"aten::convolution", "aten::convolution_backward", "aten::_fused_adam_"} <= set(kernels["names"])
    import hashlib

    assert kernels["hash"] == hashlib.sha256("\n".join(kernels["names"]).encode()).hexdigest()
    assert rows["kernel_names"].iloc[0] == kernels["names"]


def test_recording_changes_no_bits_and_records_its_window_only():
    ds = data.load_dataset("digits")
    spec = dataclasses.replace(TINY, epochs=1)
    recorder = KernelRecorder("cpu", warmup=2, steps=2)  # steps 2 and 3 of an epoch of 12
    recorded = train_replica(spec, ds, kernels=recorder)
    assert store.weights_hash(recorded.weights) == store.weights_hash(train_replica(spec, ds).weights)
    assert recorder.recorded == 2 and "aten::convolution_backward" in recorder.names
    one_step = KernelRecorder("cpu", warmup=0, steps=5)  # the window outlives the training: closed at its end
    train_replica(dataclasses.replace(spec, batch_size=len(ds.y_train)), ds, kernels=one_step)
    assert one_step.result()["steps"] == 1
    assert KernelRecorder("cpu", warmup=5).result() is None  # no step recorded: nothing to claim
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        KernelRecorder("cpu", steps=0)


def test_manifests_written_before_the_new_fields_load_with_none(in_process, tmp_path):
    root, rows = in_process
    # An older writer's manifest: the same replica without the keys (the manifest is not checksummed itself).
    old = tmp_path / "cpu-1t" / "digits" / "smallcnn" / "CONTROL" / "replica-0"
    old.parent.mkdir(parents=True)
    source = Path(rows["path"].iloc[0])
    for name in (*store.FILES, store.MANIFEST):
        (old / name).parent.mkdir(exist_ok=True)
        (old / name).write_bytes((source / name).read_bytes())
    manifest = json.loads((old / store.MANIFEST).read_text())
    del manifest["resources"], manifest["kernels"]
    (old / store.MANIFEST).write_text(json.dumps(manifest))
    loaded = store.load_runs(tmp_path).replicas.iloc[0]
    for column in ("process", "peak_device_bytes", "peak_host_bytes", "kernels_kind", "kernels_hash", "kernel_names"):
        assert loaded[column] is None, column
    # The committed store was written before them too.
    committed = store.load_runs(ROOT / "data" / "runs", hardware="cpu-2t", dataset="mnist1d", setting="CONTROL")
    assert len(committed.replicas) and committed.replicas["kernels_hash"].isna().all()
    # A malformed one is refused, naming the place.
    manifest["resources"] = {"process": "own", "peak_device_bytes": "a lot", "peak_host_bytes": 1}
    assert store.manifest_error(manifest) == "resources.peak_device_bytes must be an integer or null, got a string"
    manifest["resources"], manifest["kernels"] = (
        None,
        {"kind": "ops", "names": [1], "hash": "", "steps": 1, "seconds": 0},
    )
    assert store.manifest_error(manifest) == "kernels.names must be a list of strings"


# ----------------------------------------------------------------------------- the warning for identical IMPL replicas
def _replicas(device: str, setting: str, hashes: list[str], deterministic: bool = False) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "hardware": "cuda-h100" if device == "cuda" else "cpu-1t",
            "dataset": "cifar10",
            "model": "smallcnn",
            "setting": setting,
            "replica": range(len(hashes)),
            "device": device,
            "deterministic": deterministic,
            "perturb_ulp": False,
            "varied": [()] * len(hashes),
            "weights_hash": hashes,
            "kernels_hash": ["k1"] * len(hashes),
            "process": ["shared"] * len(hashes),
        }
    )


def _runs(frame: pd.DataFrame) -> store.Runs:
    return store.Runs(frame, pd.DataFrame(), pd.DataFrame())


def test_identical_impl_replicas_on_cuda_are_warned_about():
    assert analysis.identical_tooling_warnings(_runs(_replicas("cuda", "IMPL", ["a", "a", "a"]))) == [
        "cuda-h100/cifar10/smallcnn/IMPL: its 3 replicas are bit-identical on CUDA although its kernels are "
        "non-deterministic: the tooling varied nothing here (1 distinct kernel set(s) recorded; process: shared)"
    ]
    for quiet in (
        _replicas("cuda", "IMPL", ["a", "b", "a"]),  # they differ: the tooling did its work
        _replicas("cpu", "IMPL", ["a", "a"]),  # identical by design on the CPU
        _replicas("cuda", "CONTROL", ["a", "a"], deterministic=True),  # identical by promise
        _replicas("cuda", "IMPL", ["a"]),  # one replica proves nothing
    ):
        assert analysis.identical_tooling_warnings(_runs(quiet)) == []
    assert analysis.identical_tooling_warnings(store.load_runs(Path("/nonexistent"))) == []


# ----------------------------------------------------------------------------- the dry run's estimate
def _plan(tmp_path: Path, store_root: Path, **defaults) -> Path:
    raw = {
        "name": "t",
        "notebook": str(ROOT / "notebooks" / "10_training.ipynb"),
        "output_root": str(store_root),
        "executed_root": str(tmp_path / "executed"),
        "defaults": {"replicas": 3, "epochs": 4, "lr": 0.002, "threads": 1, **defaults},
        "cells": [{"datasets": ["digits"], "models": ["smallcnn"], "settings": ["ALGO"]}],
    }
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_estimate_comes_from_the_store_of_the_same_dataset_model_and_hardware(in_process, tmp_path, capsys):
    root, rows = in_process
    timings = [json.loads((Path(p) / store.MANIFEST).read_text())["timings"] for p in rows["path"]]
    per_epoch = sorted(t["train_seconds"] / TINY.epochs for t in timings)
    evaluation = sorted(t["eval_seconds"] for t in timings)
    replica = (per_epoch[0] + per_epoch[1]) / 2 * 4 + (evaluation[0] + evaluation[1]) / 2  # medians of two
    job = load_plan(_plan(tmp_path, root)).jobs[0]
    assert batch.estimate(job) == batch.Estimate(pytest.approx(replica), "store (2 replicas)")
    assert cli.main(["run", str(_plan(tmp_path, root)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{batch.duration(3 * replica)} (3 x {batch.duration(replica)}, store (2 replicas))" in out
    assert f"estimated device time: {batch.duration(3 * replica)} for 1 of 1 jobs to run" in out


def test_without_runs_in_the_store_the_estimate_is_the_table_or_unknown(tmp_path):
    job = load_plan(_plan(tmp_path, tmp_path / "empty", epochs=20)).jobs[0]
    assert batch.estimate(job) == batch.Estimate(pytest.approx(0.61), "table")  # README: 0.61 s for 20 epochs
    other = dataclasses.replace(job, model="resnet18")
    assert batch.estimate(other) == batch.Estimate(None, "unknown")
    # A CUDA job without runs: modelled. SmallCNN's forward FLOPs by hand (2 per multiply-add): convs of
    # 3->16 at 32x32, 16->32 at 16x16, 32->32 at 8x8 (3x3 kernels), dense 32->32 and 32->10.
    by_hand = 2 * (32 * 32 * 16 * 3 * 9 + 16 * 16 * 32 * 16 * 9 + 8 * 8 * 32 * 32 * 9 + 32 * 32 + 32 * 10)
    assert batch.forward_flops("smallcnn", 3, 32, 10) == by_hand == 4_426_368
    params = {**job.parameters, "device": "cuda", "epochs": 2, "batch_size": 128}
    cifar = dataclasses.replace(job, dataset="cifar10", parameters=params)
    # 391 steps of 128 over 50,000 images: bound by the per-step floor, not by 3 x 4.4 MFLOP x 50,000
    assert batch.estimate(cifar) == batch.Estimate(
        pytest.approx(2 * 391 * batch.GPU_STEP_FLOOR_S), "model: no GPU run yet"
    )
    resnet = dataclasses.replace(cifar, model="resnet18", parameters={**params, "epochs": 1})
    flops = 3 * batch.forward_flops("resnet18", 3, 32, 10) * 50_000
    assert batch.estimate(resnet).replica_seconds == pytest.approx(flops / batch.GPU_TRAIN_FLOPS)
    assert flops / batch.GPU_TRAIN_FLOPS > 391 * batch.GPU_STEP_FLOOR_S  # ResNet-18 is bound by its FLOPs
    assert batch.duration(40) == "40 s" and batch.duration(720) == "12 min" and batch.duration(3.4 * 3600) == "3.4 h"
    assert batch.duration(2.5 * 86400) == "2.5 d"


def test_the_paper_plan_on_8_gpus_runs_8_jobs_at_once_with_an_estimate_per_job(tmp_path, capsys, monkeypatch):
    """The acceptance of issue 10, item 1; on a machine without CUDA or the datasets, shown with a warning."""
    monkeypatch.chdir(ROOT)
    roots = ["--output-root", str(tmp_path / "runs"), "--executed-root", str(tmp_path / "executed")]
    gpus = ["--gpus", "0,1,2,3,4,5,6,7"]  # the acceptance's command: 8 jobs of 4 threads, no --cpus
    assert cli.main(["run", "plans/paper.yaml", *gpus, "--dry-run", *roots]) == 0
    out, err = capsys.readouterr()
    if not torch.cuda.is_available():  # the dry run says what this machine lacks; a real run is refused
        assert "WARNING: this machine cannot run the plan as it is (shown all the same: a dry run)" in err
        if (os.cpu_count() or 1) < 32:  # the schedule of the GPU host the plan is meant for, said so
            assert f"(the schedule of a GPU host with 32 CPU slots; this machine has {os.cpu_count()}" in out
        # every job modelled (no GPU run in the store), and ImageNet's 5 x 90 epochs fit the cell's timeout
        n = len(plan.load_plan(ROOT / "plans" / "paper.yaml", check_data=False).jobs)
        assert f"{n} of them modelled from FLOPs, not measured" in out and "more than its timeout" not in err
        assert "cannot derive the hardware label of device 'cuda' on a machine without CUDA" in err
        assert cli.main(["run", "plans/paper.yaml", *gpus, *roots]) == 2
        cells = len(yaml.safe_load((ROOT / "plans" / "paper.yaml").read_text())["cells"])
        assert f"error: plans/paper.yaml: {cells} problem(s)" in capsys.readouterr().err  # one per cell
    n = len(plan.load_plan(ROOT / "plans" / "paper.yaml", check_data=False).jobs)
    assert re.search(
        rf"schedule: up to 8 of {n} jobs at once \(8 workers; \d+ CPU slots at 4\+ per job; 8 GPU slots", out
    )
    jobs = [line for line in out.splitlines() if re.match(r"cuda\S*/(cifar10|cifar100|celeba|imagenet_stream)/", line)]
    assert len(jobs) == n > 8
    duration = r"\d+(\.\d)? (s|min|h|d)"
    assert all(re.search(rf"replicas done\)  {duration} \(\d+ x {duration}, .+\)$", line) for line in jobs)
    assert "estimated device time: " in out
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


# ----------------------------------------------------------------------------- on a GPU
@pytest.mark.requires_gpu
def test_impl_replicas_on_cuda_train_in_processes_of_their_own_and_record_their_kernels(tmp_path):
    spec = dataclasses.replace(TINY, device="cuda", setting="IMPL", threads=1)
    rows = run_cell(spec, 2, tmp_path, "cuda-test", progress=False)  # auto: a process each
    assert rows["process"].tolist() == ["own", "own"]
    assert rows["kernels_kind"].tolist() == ["cuda-kernels"] * 2
    assert all(len(names) > 0 for names in rows["kernel_names"])
    assert (rows["peak_device_bytes"] > 0).all()
    control = run_cell(dataclasses.replace(spec, setting="CONTROL"), 2, tmp_path, "cuda-test", progress=False)
    assert control["process"].tolist() == ["shared", "shared"]  # deterministic: one process, same bits
    assert torch.cuda.is_available()
