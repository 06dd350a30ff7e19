"""The batch runner end to end: real papermill jobs with real kernels, on the local pool and on a
local Ray cluster; kill-and-resume to the same bits; failures, timeouts and kernel-start retries.

Every plan here is tiny (a few epochs of SmallCNN on digits), so a job is mostly kernel start-up.
The scheduler's CPU/GPU accounting is checked with a stand-in for `run_job` (no kernels).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
import psutil
import pytest
import yaml

from nnrandomness import batch, cli, environment, plan, store

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "plans" / "smoke.yaml"
NOTEBOOK = ROOT / "notebooks" / "10_training.ipynb"
JOBS = ("cpu-1t/digits/smallcnn/CONTROL", "cpu-1t/digits/smallcnn/ALGO")


@pytest.fixture(autouse=True)
def at_root(monkeypatch):
    """Plans' relative paths are relative to the working directory: the repository root."""
    monkeypatch.chdir(ROOT)


def run(*args) -> tuple[int, str]:
    """`nnrandomness run ARGS` in this process; (exit code, what it printed on stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["run", *map(str, args)])
    return code, out.getvalue()


def roots(base: Path) -> list[str]:
    return ["--output-root", str(base / "runs"), "--executed-root", str(base / "executed")]


def summary(out: str) -> dict[str, list[str]]:
    """The runner's closing table: job name -> [status, seconds, tries, reason...]."""
    return {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("cpu-")}


def hashes(runs: Path) -> dict[str, tuple[str, str]]:
    """Replica path (relative) -> (weights_hash, predictions_hash) of every complete replica."""
    complete = [p for p in sorted(runs.glob("*/*/*/*/replica-*")) if store.is_complete(p)]
    return {
        str(p.relative_to(runs)): (m["weights_hash"], m["predictions_hash"])
        for p, m in zip(complete, map(store.read_manifest, complete))
    }


def variant(tmp_path: Path, cells=None, notebook: Path = NOTEBOOK, **defaults) -> Path:
    """The smoke plan with other defaults / cells / notebook, written to tmp_path."""
    raw = yaml.safe_load(SMOKE.read_text())
    raw["notebook"] = str(notebook)
    raw["defaults"].update(defaults)
    if cells is not None:
        raw["cells"] = cells
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The smoke plan run once, uninterrupted, two jobs at a time, each pinned to a "GPU"."""
    base = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        code, out = run(SMOKE, "--workers", 2, "--gpus", "0,1", *roots(base))
    return code, out, base


# ----------------------------------------------------------------------------- local pool
def test_smoke_plan_end_to_end(reference):
    code, out, base = reference
    assert code == 0, out
    assert "2 done, 0 skipped, 0 failed" in out
    runs = store.load_runs(base / "runs")
    assert len(runs.replicas) == 6 and not runs.problems
    by = runs.replicas.groupby("setting")
    assert by["weights_hash"].nunique().to_dict() == {"ALGO": 3, "CONTROL": 1}  # CONTROL bit-identical
    for job in JOBS:
        nb = json.loads((base / "executed" / f"{job}.ipynb").read_text())
        code_cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(c["execution_count"] for c in code_cells)
        assert not [o for c in code_cells for o in c["outputs"] if o["output_type"] == "error"]
        # papermill's and nbclient's timings and paths are stripped from the kept copy
        text = json.dumps(nb)
        assert not any(key in text for key in ('"start_time"', '"end_time"', '"duration"', '"iopub.'))
        injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
        assert [c["id"] for c in injected] == ["injected-parameters"]
        assert nb["metadata"]["papermill"]["parameters"]["settings"] == [job.split("/")[-1]]


def test_jobs_get_their_gpu_and_threads_before_the_kernel_starts(reference):
    """--gpus pins one job per GPU through CUDA_VISIBLE_DEVICES; the manifests record the
    environment each job's kernel saw (both jobs ran at once, so each had its own GPU)."""
    _, _, base = reference
    envs = {}
    for path in sorted((base / "runs").glob("*/*/*/*/replica-*")):
        m = store.read_manifest(path)
        envs.setdefault(m["spec"]["setting"], set()).add(
            (m["environment"]["env"]["CUDA_VISIBLE_DEVICES"], m["environment"]["env"]["OMP_NUM_THREADS"])
        )
    assert envs == {"CONTROL": {("0", "1")}, "ALGO": {("1", "1")}}


def test_rerunning_a_finished_plan_does_no_work(reference):
    _, _, base = reference
    files = sorted(p for p in base.rglob("*") if p.is_file())
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    code, out = run(SMOKE, "--workers", 2, *roots(base))
    assert code == 0 and "0 done, 2 skipped, 0 failed" in out, out
    files = sorted(p for p in base.rglob("*") if p.is_file())
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == before
    code, out = run(SMOKE, "--dry-run", *roots(base))
    assert code == 0 and "2 jobs, 2 complete, 0 to run" in out


def test_another_recipe_on_the_same_store_is_refused(reference, tmp_path, capsys):
    _, _, base = reference
    code, _ = run(variant(tmp_path, epochs=4), *roots(base))
    assert code == 2
    err = capsys.readouterr().err
    assert "replica-0 in the store was trained with another recipe (epochs: stored 3, planned 4)" in err


def start_runner(tmp_path: Path, *args) -> subprocess.Popen:
    """`nnrandomness run` in a session of its own, its temporary folders under tmp_path/tmp."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "nnrandomness", "run", str(SMOKE), *map(str, args), *roots(tmp_path)]
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE, text=True)


def wait_for_training(proc: subprocess.Popen, replica: Path) -> list[psutil.Process]:
    """Wait until `replica` is complete (the job is training); the runner's process tree then."""
    deadline = time.monotonic() + 240
    while not store.is_complete(replica):
        assert proc.poll() is None, "the runner finished before it could be killed"
        assert time.monotonic() < deadline, "the job never started training"
        time.sleep(0.01)
    tree = psutil.Process(proc.pid).children(recursive=True)
    commands = [" ".join(p.cmdline()) for p in tree]
    assert len(tree) >= 2 and any("ipykernel" in c for c in commands), commands  # papermill and its kernel
    return tree


def running(process: psutil.Process) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for an init that may never reap it)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_tree_ends(tree: list[psutil.Process], seconds: float = 5) -> None:
    """Papermill and the kernel end within `seconds` of their runner, by themselves."""
    deadline = time.monotonic() + seconds
    while any(map(running, tree)) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = [p for p in tree if running(p)]
    for p in alive:  # not to leave them running after a failure
        p.kill()
    assert not alive, f"outlived the runner: {alive}"


def test_killed_plan_resumes_to_the_same_bits(reference, tmp_path, monkeypatch):
    """SIGKILL the runner alone while the second job trains: its papermill (PR_SET_PDEATHSIG) and
    kernel (which watches the runner) end by themselves within seconds; the next run sweeps the
    dead runner's temporary folder, resumes, and the store ends up bitwise equal to the
    uninterrupted run; the finished job is not re-run."""
    _, _, ref = reference
    proc = start_runner(tmp_path, "--workers", 1)
    runs, executed = tmp_path / "runs" / "cpu-1t/digits/smallcnn", tmp_path / "executed" / "cpu-1t/digits/smallcnn"
    try:
        tree = wait_for_training(proc, runs / "ALGO" / "replica-0")  # the second job is half way
    finally:
        proc.kill()  # the runner only: SIGKILL cannot be caught, its children must notice by themselves
        proc.communicate()
    assert_tree_ends(tree)
    assert (executed / "CONTROL.ipynb").exists() and not (executed / "ALGO.ipynb").exists()
    assert not store.is_complete(runs / "ALGO" / "replica-2")
    stale = list((tmp_path / "tmp").glob(f"nnrandomness-job-{proc.pid}-*"))
    assert len(stale) == 1, "the killed runner's temporary folder"
    control = (executed / "CONTROL.ipynb").stat().st_mtime_ns

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    code, out = run(SMOKE, "--workers", 1, *roots(tmp_path))
    assert code == 0, out
    jobs = summary(out)
    assert jobs[JOBS[0]][0] == "skipped" and jobs[JOBS[1]][0] == "done"
    assert (executed / "CONTROL.ipynb").stat().st_mtime_ns == control
    assert hashes(tmp_path / "runs") == hashes(ref / "runs") and len(hashes(ref / "runs")) == 6
    assert list((tmp_path / "tmp").glob("nnrandomness-job-*")) == []  # swept, and the new run's own removed


def test_a_terminated_runner_stops_its_jobs_and_cleans_up(tmp_path):
    """SIGTERM: the runner kills its jobs' process groups, keeps no half-run notebook, removes its
    temporary folders and exits with 128 + 15, within seconds."""
    proc = start_runner(tmp_path, "--workers", 1)
    runs = tmp_path / "runs" / "cpu-1t/digits/smallcnn"
    try:
        tree = wait_for_training(proc, runs / "CONTROL" / "replica-0")
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        proc.communicate(timeout=20)
        seconds = time.monotonic() - started
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM and seconds < 10, seconds
    assert_tree_ends(tree)
    assert list((tmp_path / "tmp").glob("nnrandomness-job-*")) == []
    assert not (tmp_path / "executed" / "cpu-1t/digits/smallcnn" / "CONTROL.ipynb").exists()
    assert not store.is_complete(runs / "CONTROL" / "replica-2")


def test_two_runners_on_one_store_split_the_work(reference, tmp_path):
    """Two runners started together on one store: each job is run by one of them (the other
    finds it locked, goes on, and at the end finds it done by the other); both succeed and the
    store is the uninterrupted run's."""
    _, _, ref = reference
    first = start_runner(tmp_path, "--workers", 1)
    second = start_runner(tmp_path, "--workers", 1)
    outs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outs
    tables = [summary(out) for out in outs]
    for job in JOBS:
        statuses = sorted(t[job][0] for t in tables)
        assert statuses == ["done", "skipped"], (job, outs)
        skipped = next(t[job] for t in tables if t[job][0] == "skipped")
        assert "done by another runner" in " ".join(skipped) or "complete in the store" in " ".join(skipped)
    assert hashes(tmp_path / "runs") == hashes(ref / "runs")


# ----------------------------------------------------------------------------- Ray
def test_ray_backend_gives_the_same_bits(reference, tmp_path):
    """The same plan as Ray tasks on a local two-CPU cluster started (and stopped) by the runner."""
    import ray

    _, _, ref = reference
    code, out = run(SMOKE, "--ray", "local", "--cpus", 2, *roots(tmp_path))
    assert code == 0 and "2 done, 0 skipped, 0 failed" in out, out
    assert not ray.is_initialized()
    assert hashes(tmp_path / "runs") == hashes(ref / "runs")
    assert all((tmp_path / "executed" / f"{job}.ipynb").exists() for job in JOBS)


# ----------------------------------------------------------------------------- failures
FAILING_BODY = """
import time
from nnrandomness import ReplicaSpec, params, run_cell

if settings == ["ALGO"]:
    raise RuntimeError("boom")
if settings == ["IMPL"]:
    time.sleep(600)
if settings == ["CONTROL"]:  # trains for real; any other setting does nothing
    values = params.from_namespace(globals())
    run_cell(ReplicaSpec.from_parameters(values, "CONTROL"), replicas, output_root, hardware)
"""


def failing_notebook(tmp_path: Path) -> Path:
    """The training notebook's parameters cell, then a cell that fails in a way chosen by setting."""
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    nb.cells = [params, nbformat.v4.new_code_cell(FAILING_BODY)]
    path = tmp_path / "failing.ipynb"
    nbformat.write(nb, str(path))
    return path


# Kills every kernel (never papermill) while the counter file holds a positive number.
SITECUSTOMIZE = """
import os, sys
if "ipykernel_launcher" in sys.orig_argv:
    counter = os.environ["NNR_TEST_KERNEL_FAILURES"]
    left = int(open(counter).read())
    if left > 0:
        open(counter, "w").write(str(left - 1))
        os._exit(1)
"""


class TestFailures:
    """Jobs that fail. A class of their own: pytest-xdist (--dist loadscope) can run them beside
    the tests above, which share the module's reference run."""

    def test_failures_are_isolated_reported_and_kept(self, tmp_path):
        """A cell error (never retried), a timeout (killed) and a notebook that writes nothing fail
        their own jobs only; the other job finishes; every executed notebook is kept; exit code 1."""
        cells = [
            {"datasets": ["digits"], "models": ["smallcnn"], "settings": ["CONTROL", "ALGO", "ORDER"]},
            {"datasets": ["digits"], "models": ["smallcnn"], "settings": ["IMPL"], "timeout": 10},
        ]
        path = variant(tmp_path, cells=cells, notebook=failing_notebook(tmp_path), replicas=1, epochs=1)
        code, out = run(path, "--workers", 2, *roots(tmp_path))
        assert code == 1, out
        jobs = summary(out)
        assert jobs["cpu-1t/digits/smallcnn/CONTROL"][0] == "done"
        algo = jobs["cpu-1t/digits/smallcnn/ALGO"]
        assert algo[0] == "failed" and algo[2] == "1" and "RuntimeError: boom" in " ".join(algo)
        assert "timed out after 10 s" in " ".join(jobs["cpu-1t/digits/smallcnn/IMPL"])
        assert "replicas [0] are not complete in the store" in " ".join(jobs["cpu-1t/digits/smallcnn/ORDER"])
        assert "1 done, 0 skipped, 3 failed" in out
        executed = tmp_path / "executed" / "cpu-1t/digits/smallcnn"
        kept = sorted(p.name for p in executed.iterdir())
        assert kept == ["ALGO.ipynb", "CONTROL.ipynb", "IMPL.ipynb", "ORDER.ipynb"]
        errors = [
            o
            for c in nbformat.read(str(executed / "ALGO.ipynb"), as_version=4).cells
            for o in c.get("outputs", [])
            if o.output_type == "error"
        ]
        assert [(e.ename, e.evalue) for e in errors] == [("RuntimeError", "boom")]

    def test_kernel_start_failures_are_retried_a_bounded_number_of_times(self, tmp_path, monkeypatch):
        (tmp_path / "site").mkdir()
        (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        counter = tmp_path / "failures"
        # In front of the caller's path, which may hold the sources under test (a worktree's src/).
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]))
        monkeypatch.setenv("NNR_TEST_KERNEL_FAILURES", str(counter))
        one = [{"datasets": ["digits"], "models": ["smallcnn"], "settings": ["CONTROL"]}]
        path = variant(tmp_path, cells=one, replicas=1, epochs=1)

        counter.write_text("2")  # two kernels die, the third try runs
        code, out = run(path, "--retries", 2, *roots(tmp_path / "a"))
        assert code == 0, out
        status, _, tries, *_ = summary(out)[JOBS[0]]
        assert (status, tries) == ("done", "3")

        counter.write_text("5")  # more deaths than tries
        code, out = run(path, "--retries", 1, *roots(tmp_path / "b"))
        assert code == 1, out
        status, _, tries, *reason = summary(out)[JOBS[0]]
        assert (status, tries) == ("failed", "2")
        assert "the kernel did not start in 2 tries" in " ".join(reason) and "Kernel died" in " ".join(reason)
        assert counter.read_text() == "3"

    def test_the_notebook_refuses_unknown_and_mistyped_parameters(self, tmp_path):
        """papermill itself only warns about an unknown parameter: the notebook's validation cell
        fails before any training."""
        out = tmp_path / "out.ipynb"
        cmd = [
            sys.executable,
            "-m",
            "papermill",
            str(NOTEBOOK),
            str(out),
            "--no-progress-bar",
            "-y",
            f"{{epoch: 3, settings: CONTROL, output_root: {tmp_path / 'runs'}}}",
        ]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        assert proc.returncode != 0
        errors = [
            o
            for c in nbformat.read(str(out), as_version=4).cells
            for o in c.get("outputs", [])
            if o.output_type == "error"
        ]
        assert len(errors) == 1 and errors[0].ename == "ValueError"
        assert "unknown parameter 'epoch'" in errors[0].evalue
        assert "settings must be a list, got 'CONTROL'" in errors[0].evalue
        assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- roots and locks (no kernels)
@pytest.fixture
def no_jobs(monkeypatch):
    """run_job replaced by a recorder: a test that fails must do so before any job starts."""
    started = []
    monkeypatch.setattr(batch, "run_job", lambda job, **kwargs: started.append(job.name))
    return started


def test_an_output_root_that_cannot_be_created_stops_the_plan_before_any_job(tmp_path, no_jobs, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _ = run(SMOKE, "--output-root", blocker / "runs", "--executed-root", tmp_path / "executed")
    assert code == 2 and no_jobs == []
    err = capsys.readouterr().err
    assert err.count("not writable") == 1 and f"the output root is not writable: {blocker}/runs: Not a directory" in err


def test_a_read_only_executed_root_stops_the_plan_before_any_job(tmp_path, no_jobs, capsys, monkeypatch):
    """A permission or read-only error on the probe file (injected: the tests run as root, whom
    chmod does not stop) is found before any kernel starts, not after the training."""
    real = tempfile.TemporaryFile

    def refuse(*args, dir=None, **kwargs):
        if Path(dir).is_relative_to(tmp_path / "executed"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(batch.tempfile, "TemporaryFile", refuse)
    code, _ = run(SMOKE, *roots(tmp_path))
    assert code == 2 and no_jobs == []
    err = capsys.readouterr().err
    assert (
        f"the executed root is not writable: {tmp_path}/executed/cpu-1t/digits/smallcnn: Read-only file system" in err
    )
    assert "output root" not in err  # the store is fine


def test_a_job_locked_by_another_runner_is_left_to_it(tmp_path):
    job = plan.load_plan(SMOKE, output_root=tmp_path / "runs", executed_root=tmp_path / "executed").jobs[0]
    with store.lock(job.replica_dir(0).parent) as held:
        assert held
        result = batch.run_job(job)
    assert (result.status, result.reason) == ("elsewhere", batch.ELSEWHERE)
    assert not (tmp_path / "executed").exists()  # no kernel, no notebook


def test_stale_temporary_folders_of_dead_runners_are_swept(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead, mine = tmp_path / "nnrandomness-job-999999999-abc", tmp_path / f"nnrandomness-job-{os.getpid()}-abc"
    for d in (dead, mine):
        (d / "sub").mkdir(parents=True)
    assert batch.sweep_job_temporaries() == [dead]
    assert not dead.exists() and mine.exists()


# ----------------------------------------------------------------------------- the scheduler
@pytest.fixture
def recorded(monkeypatch):
    """Replace run_job by a stand-in that records when each job ran and what it was given."""
    log, lock = [], threading.Lock()

    def fake(job, *, retries, gpu, wait_lock=False):
        with lock:
            log.append(("start", job.name, job.threads, gpu, time.monotonic()))
        time.sleep(0.05)
        with lock:
            log.append(("end", job.name, job.threads, gpu, time.monotonic()))
        return batch.JobResult(job.name, "done", attempts=1)

    monkeypatch.setattr(batch, "run_job", fake)
    return log


def mixed_jobs(tmp_path) -> list[plan.Job]:
    cells = [
        {"datasets": ["digits"], "models": ["smallcnn"], "settings": ["CONTROL", "ALGO", "IMPL"]},
        {"datasets": ["digits"], "models": ["smallcnn"], "settings": ["CONTROL", "ALGO"], "threads": 2},
        {"datasets": ["digits"], "models": ["smallcnn_bn"], "settings": ["CONTROL", "ALGO"]},
    ]
    return plan.load_plan(variant(tmp_path, cells=cells)).jobs


def replay(log):
    """(max CPU slots in use, max jobs at once, the jobs running beside each job)."""
    running, most_slots, most_jobs, beside = {}, 0, 0, {}
    for kind, name, threads, gpu, _ in log:
        if kind == "start":
            for other in running:
                beside.setdefault(name, set()).add(other)
                beside.setdefault(other, set()).add(name)
            running[name] = (threads, gpu)
        else:
            del running[name]
        most_slots = max(most_slots, sum(t for t, _ in running.values()))
        most_jobs = max(most_jobs, len(running))
    return most_slots, most_jobs, beside


def test_pool_never_oversubscribes_the_cpus(recorded, tmp_path):
    jobs = mixed_jobs(tmp_path)
    results = batch.run_local(jobs, workers=2, cpus=2)
    assert sorted(r.name for r in results) == sorted(j.name for j in jobs)
    most_slots, most_jobs, beside = replay(recorded)
    assert most_slots == 2 and most_jobs == 2
    for job in jobs:
        if job.threads == 2:  # a 2-thread job on 2 cores runs alone
            assert not beside.get(job.name), beside
    starts = [name for kind, name, *_ in recorded if kind == "start"]
    assert starts == [j.name for j in jobs]  # plan order: a wide job is never overtaken


def test_pool_gives_each_running_job_its_own_gpu(recorded, tmp_path):
    jobs = [j for j in mixed_jobs(tmp_path) if j.threads == 1]
    batch.run_local(jobs, workers=4, cpus=4, gpus=["0", "1"])
    running = {}
    for kind, name, _, gpu, _ in recorded:
        if kind == "start":
            assert gpu in ("0", "1") and gpu not in running.values()
            running[name] = gpu
        else:
            del running[name]
    assert {gpu for _, _, _, gpu, _ in recorded} == {"0", "1"}


def test_a_job_wider_than_the_pool_runs_alone(recorded, tmp_path):
    """threads count against the pool's CPU slots; a 4-thread job on 2 slots holds them all (no refusal:
    its bits are the 4-thread ones, only slower), and 1-thread jobs still run two at once."""
    cells = [
        {"datasets": ["digits"], "models": ["smallcnn"], "settings": ["CONTROL", "ALGO"]},
        {"datasets": ["digits"], "models": ["smallcnn_bn"], "settings": ["CONTROL", "ALGO"], "threads": [4, 1]},
    ]
    jobs = plan.load_plan(variant(tmp_path, cells=cells)).jobs
    assert [j.threads for j in jobs] == [1, 1, 4, 4, 1, 1]
    assert [batch.cpu_slots(j, 2) for j in jobs] == [1, 1, 2, 2, 1, 1]
    results = batch.run_local(jobs, workers=2, cpus=2)
    assert sorted(r.name for r in results) == sorted(j.name for j in jobs)
    _, most_jobs, beside = replay(recorded)
    assert most_jobs == 2
    for job in jobs:
        if job.threads == 4:
            assert not beside.get(job.name), beside
    starts = [name for kind, name, *_ in recorded if kind == "start"]
    assert starts == [j.name for j in jobs]  # plan order
    assert batch.schedule(jobs[2:4], workers=2, cpus=2, gpus=None).startswith("schedule: up to 1 of 2 jobs at once")


def test_each_job_gets_its_cpu_capability_and_none_leaks_from_the_shell(tmp_path, monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")  # exported in the runner's shell
    cells = [
        {"datasets": ["digits"], "models": ["smallcnn"], "settings": ["CONTROL"], "cpu_capability": ["default", "avx2"]}
    ]
    default, avx2 = plan.load_plan(variant(tmp_path, cells=cells)).jobs
    assert "ATEN_CPU_CAPABILITY" not in batch.job_environment(default)  # "default": the variable unset
    assert batch.job_environment(avx2)["ATEN_CPU_CAPABILITY"] == "avx2"


@pytest.mark.skipif(
    "avx2" not in environment.supported_cpu_capabilities(), reason="this CPU has no AVX2: torch cannot dispatch to it"
)
def test_two_cpu_capabilities_train_in_their_own_cells(tmp_path, monkeypatch):
    """Real jobs under cpu_capability default and avx2 (1 replica, 1 epoch): each kernel dispatched to what
    its job asked for (the fingerprint), under its own hardware label, whatever the runner's shell says."""
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")  # must not reach the default job
    cells = [
        {"datasets": ["digits"], "models": ["smallcnn"], "settings": ["CONTROL"], "cpu_capability": ["default", "avx2"]}
    ]
    path = variant(tmp_path, cells=cells, replicas=1, epochs=1, lr_milestones=[])
    code, out = run(path, "--workers", 2, "--cpus", 2, *roots(tmp_path))
    assert code == 0 and "2 done, 0 skipped, 0 failed" in out, out
    manifests = {m["hardware"]: m for m in map(store.read_manifest, (tmp_path / "runs").glob("*/*/*/*/replica-0"))}
    assert sorted(manifests) == ["cpu-1t", "cpu-1t-avx2"]
    default, avx2 = manifests["cpu-1t"]["environment"], manifests["cpu-1t-avx2"]["environment"]
    assert (default["env"]["ATEN_CPU_CAPABILITY"], avx2["env"]["ATEN_CPU_CAPABILITY"]) == (None, "avx2")
    assert default["cpu_capability"] == environment.expected_cpu_capability("default")
    assert avx2["cpu_capability"] == "AVX2"
    same = manifests["cpu-1t"]["weights_hash"] == manifests["cpu-1t-avx2"]["weights_hash"]
    # Whether the instruction set changes the bits depends on the CPU and the model: shown, not asserted.
    print(f"default ({default['cpu_capability']}) vs avx2: weights {'identical' if same else 'different'}")


def test_a_committed_store_takes_runs_only_from_a_clean_checkout(tmp_path):
    """Provenance: a store git tracks (data/runs) gets replicas only from a clean checkout, whose
    commit the manifests then record; a scratch store takes them from any checkout."""
    from nnrandomness import environment

    repo = tmp_path / "repo"
    (repo / "runs").mkdir(parents=True)
    (repo / "runs" / "README").write_text("a committed store\n")
    (repo / "code.py").write_text("a = 1\n")

    def git(*args):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True, capture_output=True
        )

    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "store")
    jobs = plan.load_plan(variant(tmp_path), output_root=repo / "runs", executed_root=tmp_path / "executed").jobs
    clean = environment.git_commit(repo)
    assert clean and not clean.endswith("+dirty")
    assert batch.provenance_problem(jobs, commit=clean) is None

    (repo / "code.py").write_text("a = 2\n")  # an uncommitted change to tracked code
    dirty = environment.git_commit(repo)
    assert dirty.endswith("+dirty")
    problem = batch.provenance_problem(jobs, commit=dirty)
    assert f"the committed store {repo / 'runs'} would get 2 job(s)" in problem and dirty in problem
    assert batch.provenance_problem([], commit=dirty) is None  # a finished plan: nothing to refuse
    scratch = plan.load_plan(variant(tmp_path), output_root=repo / "scratch", executed_root=tmp_path / "ex").jobs
    assert batch.provenance_problem(scratch, commit=dirty) is None
    (repo / "untracked-store").mkdir()
    untracked = plan.load_plan(variant(tmp_path), output_root=repo / "untracked-store", executed_root=tmp_path).jobs
    assert batch.provenance_problem(untracked, commit=dirty) is None
