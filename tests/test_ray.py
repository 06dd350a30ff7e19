"""The runner on a real local Ray cluster: options, the start-up check of the cluster, hardware
labels derived on the worker, and retries of system failures (never of a failing notebook).

One cluster (2 CPUs, one GPU slot) serves the module: `batch.run_ray` uses a cluster this process
has started and leaves it running. On a machine without CUDA the GPU slot is only Ray's resource
(Ray does not look for the device behind it): enough to send a CUDA job to a worker without CUDA.
The smoke plan's jobs are mostly kernel start-up; `tests/test_batch.py` runs the whole smoke plan on
a cluster the runner starts itself and compares its bits with the local pool's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import psutil
import pytest
import torch
import yaml
from test_batch import variant

from nnrandomness import batch, cli, environment, plan, store

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "plans" / "smoke.yaml"
NOTEBOOK = ROOT / "notebooks" / "10_training.ipynb"


@pytest.fixture(autouse=True)
def at_root(monkeypatch):
    """Plans' relative paths are relative to the working directory: the repository root."""
    monkeypatch.chdir(ROOT)


@pytest.fixture(scope="module")
def cluster():
    import ray

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def plan_file(tmp_path: Path, cells=None, notebook: Path = NOTEBOOK, **defaults) -> Path:
    """test_batch's smoke-plan variant, with its store and executed notebooks in tmp_path."""
    path = variant(tmp_path, cells, notebook, **defaults)
    raw = yaml.safe_load(path.read_text())
    raw.update(output_root=str(tmp_path / "runs"), executed_root=str(tmp_path / "executed"))
    path.write_text(yaml.safe_dump(raw))
    return path


def node_text(ray) -> str:
    (node,) = ray.nodes()
    return f"node {node['NodeManagerAddress']} ({node['NodeManagerHostname']})"


def nothing_written(tmp_path: Path) -> bool:
    """No replica, no executed notebook, no check file left behind."""
    found = [*tmp_path.rglob("replica-*"), *tmp_path.rglob("*.ipynb"), *tmp_path.rglob(f"{batch._MARKER_PREFIX}*")]
    return not found


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    "option, value, rule",
    [
        ("--ray-memory", "-1", "0 (no reservation) or more"),
        ("--ray-memory", "lots", "0 (no reservation) or more"),
        ("--ray-memory", "inf", "0 (no reservation) or more"),
        ("--ray-retries", "-1", "0 or more"),
        ("--ray-retries", "1.5", "0 or more"),
    ],
)
def test_bad_ray_options_are_refused_before_any_work(option, value, rule, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", str(SMOKE), "--ray", "local", option, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: " in err and rule in err and repr(value) in err, err


def test_run_ray_refuses_bad_values_before_ray_starts():
    import ray

    with pytest.raises(ValueError, match=r"--ray-memory must be a number of GiB, 0 \(no reservation\) or more, got -1"):
        batch.run_ray([], address="local", memory=-1)
    with pytest.raises(ValueError, match="--ray-retries must be a whole number of extra tries, 0 or more, got True"):
        batch.run_ray([], address="local", system_retries=True)
    assert not ray.is_initialized()


def test_resources_of_a_job():
    """Threads as CPUs (at most the CPUs of a cluster started here), a GPU for CUDA, memory in bytes."""
    (job,) = [j for j in plan.load_plan(SMOKE).jobs if j.setting == "CONTROL"]
    assert batch.ray_resources(job, cpus=None, memory=4) == {"num_cpus": 1, "num_gpus": 0, "memory": 4 * 2**30}
    assert batch.ray_resources(job, cpus=None, memory=0) == {"num_cpus": 1, "num_gpus": 0}  # 0: no reservation
    wide = dataclasses.replace(job, parameters={**job.parameters, "threads": 8, "device": "cuda"})
    assert batch.ray_resources(wide, cpus=2, memory=0.5) == {"num_cpus": 2, "num_gpus": 1, "memory": 2**29}


# ----------------------------------------------------------------------------- the start-up check
def test_the_node_check_names_each_path_a_node_does_not_see(tmp_path):
    """`node_problems` (what a node runs) against what the driver expects (`_node_expectations`),
    this process playing both: the driver's check files removed stand for a node on another file
    system, a changed notebook for another checkout at the same path."""
    notebook = tmp_path / "training.ipynb"
    notebook.write_bytes(NOTEBOOK.read_bytes())
    (tmp_path / "data").mkdir()
    jobs = plan.load_plan(plan_file(tmp_path, notebook=notebook, data_root=str(tmp_path / "data")), check_data=False)
    expected, markers = batch._node_expectations(jobs.jobs)
    assert batch.node_problems(expected) == []  # the driver's own view
    assert sorted(m.parent for m in markers) == [tmp_path / "executed", tmp_path / "runs"]
    for marker in markers:
        marker.unlink()
    with notebook.open("a") as f:
        f.write("\n")
    assert batch.node_problems(expected) == [
        f"the training notebook {notebook} differs from the driver's (another checkout at the same path?)",
        f"the store {tmp_path / 'runs'} is not the driver's: its check file {markers[0].name} is missing (not the "
        "same shared file system)",
        f"the executed root {tmp_path / 'executed'} is not the driver's: its check file {markers[0].name} is missing "
        "(not the same shared file system)",
    ]


def test_a_path_a_node_does_not_see_stops_every_job_before_it_starts(cluster, tmp_path):
    missing = tmp_path / "no-such-data"
    jobs = plan.load_plan(plan_file(tmp_path, data_root=str(missing)), check_data=False).jobs
    with pytest.raises(batch.RayClusterError) as error:
        batch.run_ray(jobs, address="auto")
    assert error.value.problems == [
        f"{node_text(cluster)}: the data root of the digits jobs {missing} does not exist here (no such directory)"
    ]
    assert "none was started" in str(error.value)
    assert nothing_written(tmp_path)


def test_a_job_no_node_can_hold_is_refused_before_any_job_starts(cluster, tmp_path):
    """Ray would keep such a task pending forever."""
    jobs = plan.load_plan(plan_file(tmp_path), check_data=False).jobs
    with pytest.raises(batch.RayClusterError) as error:
        batch.run_ray(jobs, address="auto", memory=100_000)
    (problem,) = error.value.problems
    assert problem.startswith(
        "2 jobs (cpu-1t/digits/smallcnn/CONTROL, ...) ask(s) for 1 CPU, 0 GPU, 100000 GiB of memory, more than "
        f"any node has ({node_text(cluster)}: 2 CPU, 1 GPU, "
    ), problem
    assert nothing_written(tmp_path)


# ----------------------------------------------------------------------------- the hardware label
# A driver without CUDA (a CPU-only head node): it loads a CUDA plan without deriving the GPU's
# name (the placeholder label) and runs its job on the cluster; prints the results as JSON.
CPU_ONLY_DRIVER = """
import dataclasses, json, sys
from nnrandomness import batch, plan
jobs = plan.load_plan(sys.argv[1], check_data=False).jobs
print(json.dumps([job.hardware for job in jobs]))
print(json.dumps([dataclasses.asdict(r) for r in batch.run_ray(jobs, address=sys.argv[2])]))
"""


def test_a_cuda_job_gets_the_label_of_the_worker_that_trains_it(cluster, tmp_path):
    """The driver cannot name the GPU (it has none); the worker that trains the job does. On a
    machine without CUDA the worker cannot either: the job fails there, naming the node, and
    nothing is written under the placeholder label; on a GPU host it trains under the GPU's label."""
    cells = [{"datasets": ["digits"], "models": ["smallcnn"], "settings": ["CONTROL"]}]
    path = plan_file(tmp_path, cells=cells, device="cuda", replicas=2)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT / "src")}
    address = cluster.get_runtime_context().gcs_address
    proc = subprocess.run(
        [sys.executable, "-c", CPU_ONLY_DRIVER, str(path), address],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The JSON lines; the runner's own lines ("failed  cuda/...") come between them.
    labels, results = (json.loads(line) for line in proc.stdout.splitlines() if line.startswith("["))
    assert labels == [plan.PLACEHOLDER_LABEL]
    (result,) = results
    assert result["name"] == "cuda/digits/smallcnn/CONTROL"  # the plan's name: the summary lists it so
    if not torch.cuda.is_available():
        assert result["status"] == "failed"
        assert result["reason"] == (
            f"on {node_text(cluster)}: cannot derive the hardware label here: ValueError: cannot derive the "
            "hardware label of device 'cuda' on a machine without CUDA; run on the GPU host or give the hardware label"
        )
        assert nothing_written(tmp_path)
        return
    label = environment.hardware_label("cuda")  # this machine's GPU, Ray's GPU 0
    assert result["status"] == "done", result
    assert result["reason"] == f"as {label} on {node_text(cluster)}"
    for k in range(2):
        replica = tmp_path / "runs" / label / "digits" / "smallcnn" / "CONTROL" / f"replica-{k}"
        assert store.read_manifest(replica)["hardware"] == label
    assert (tmp_path / "executed" / label / "digits" / "smallcnn" / "CONTROL.ipynb").exists()
    assert not (tmp_path / "runs" / plan.PLACEHOLDER_LABEL).exists()


# ----------------------------------------------------------------------------- retries
# The training notebook's parameters cell, then: CONTROL trains; ALGO counts its executions and fails.
BODY = """
from nnrandomness import ReplicaSpec, params, run_cell

if settings == ["ALGO"]:
    with open({counter!r}, "a") as f:
        f.write("executed\\n")
    raise RuntimeError("boom")
values = params.from_namespace(globals())
run_cell(ReplicaSpec.from_parameters(values, "CONTROL"), replicas, output_root, hardware)
"""


def counting_notebook(tmp_path: Path, counter: Path) -> Path:
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    nb.cells = [params, nbformat.v4.new_code_cell(BODY.format(counter=str(counter)))]
    path = tmp_path / "counting.ipynb"
    nbformat.write(nb, str(path))
    return path


def kill_worker_of(setting: str, once: Path, deadline: float) -> tuple[int, dict] | None:
    """SIGKILL the Ray worker running the job of `setting` once `once` (a replica) is complete; its
    pid and the replica's manifest then. The worker is the runner pid on its papermill's command
    line (`batch._papermill`)."""
    while time.monotonic() < deadline:
        if store.is_complete(once):
            for proc in psutil.process_iter(["cmdline"]):
                cmd = proc.info["cmdline"] or []
                if len(cmd) > 8 and cmd[1:3] == ["-c", batch._DIE_WITH_RUNNER] and "-f" in cmd:
                    try:
                        values = yaml.safe_load(Path(cmd[cmd.index("-f") + 1]).read_text())
                    except OSError:
                        continue
                    if values["settings"] == [setting]:
                        manifest = store.read_manifest(once)
                        os.kill(int(cmd[3]), signal.SIGKILL)
                        return int(cmd[3]), manifest
        time.sleep(0.1)
    return None


def test_a_worker_that_dies_is_retried_and_a_failing_notebook_is_not(cluster, tmp_path):
    """Two jobs at once: CONTROL's worker is SIGKILLed after its first replica (a system failure:
    Ray runs the task again, which skips that replica and trains the others), ALGO's notebook raises
    (a result: executed once, never retried)."""
    counter = tmp_path / "algo-executions.txt"
    jobs = plan.load_plan(plan_file(tmp_path, notebook=counting_notebook(tmp_path, counter))).jobs
    control = next(j for j in jobs if j.setting == "CONTROL")
    killed = {}
    killer = threading.Thread(
        target=lambda: killed.update(it=kill_worker_of("CONTROL", control.replica_dir(0), time.monotonic() + 300))
    )
    killer.start()
    try:
        results = {r.name: r for r in batch.run_ray(jobs, address="auto", system_retries=1)}
    finally:
        killer.join()
    assert killed["it"] is not None, "CONTROL's worker was never found running after its first replica"
    _, first = killed["it"]

    done, failed = results[control.name], results["cpu-1t/digits/smallcnn/ALGO"]
    assert done.status == "done", done
    assert done.reason == f"as cpu-1t on {node_text(cluster)}"  # the label the worker derived, and where
    assert all(store.is_complete(control.replica_dir(k)) for k in range(3))
    assert store.read_manifest(control.replica_dir(0)) == first  # skipped by the retry, not trained again
    hashes = {store.read_manifest(control.replica_dir(k))["weights_hash"] for k in range(3)}
    assert len(hashes) == 1  # CONTROL: bit-identical across the killed try and the retry

    assert failed.status == "failed" and "RuntimeError: boom" in failed.reason and failed.attempts == 1, failed
    assert counter.read_text() == "executed\n"


# ----------------------------------------------------------------------------- the dry run
def test_the_dry_run_says_what_each_job_asks_of_ray_and_whose_label_it_gets(tmp_path):
    cells = [
        {"datasets": ["digits"], "models": ["smallcnn"], "settings": ["CONTROL", "ALGO"]},
        {"datasets": ["digits"], "models": ["smallcnn"], "settings": ["CONTROL"], "device": "cuda", "threads": 4},
    ]
    jobs = plan.load_plan(plan_file(tmp_path, cells=cells), check_data=False).jobs
    assert batch.ray_schedule(jobs, address="local", cpus=2, memory=0.5, system_retries=2).splitlines() == [
        "on Ray: 2 job(s) ask for 1 CPU, 0 GPU, 0.5 GiB of memory each",
        "on Ray: 1 job(s) ask for 2 CPU, 1 GPU, 0.5 GiB of memory each",  # 4 threads, a local cluster of 2 CPUs
        "a job whose worker or node dies is retried up to 2 times (--ray-retries); a job that fails in its notebook "
        "is not",
        "1 CUDA job(s) get the hardware label of the GPU that trains them, derived on its worker (listed above with "
        "this machine's label, or 'cuda' where it has no CUDA)",
    ]
