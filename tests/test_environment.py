"""Hardware labels and the software fingerprint recorded with every run."""

import subprocess
import sys

import torch

from nnrandomness import environment


def test_cpu_label_carries_the_thread_count():
    assert environment.hardware_label("cpu", 2) == "cpu-2t"
    assert environment.hardware_label("cpu") == f"cpu-{torch.get_num_threads()}t"


def test_fingerprint_records_what_changes_bits():
    fp = environment.fingerprint("cpu")
    assert fp["torch"] == torch.__version__
    assert fp["num_threads"] == torch.get_num_threads()
    assert fp["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert {"ATEN_CPU_CAPABILITY", "CUBLAS_WORKSPACE_CONFIG", "CUDA_VISIBLE_DEVICES"} <= set(fp["env"])
    assert fp["cpu_model"] and fp["gpu_name"] is None


def test_git_commit_of_a_checkout(tmp_path):
    assert environment.git_commit(tmp_path) is None  # not a repository
    run = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    (tmp_path / "f").write_text("1")
    run("add", "f")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert environment.git_commit(tmp_path) == sha
    (tmp_path / "f").write_text("2")
    assert environment.git_commit(tmp_path) == sha + "+dirty"


def test_cublas_workspace_is_set_before_cuda_initialises():
    # In a fresh process: the variable is in the environment inside the block and CUDA has not
    # been initialised by configuring it (cuBLAS reads it when its first handle is created).
    code = (
        "import os, torch; from nnrandomness import noise\n"
        "cfg = noise.BackendConfig(deterministic=True, cublas_workspace_config=':4096:8')\n"
        "with noise.configure_determinism(cfg) as r:\n"
        "    assert os.environ['CUBLAS_WORKSPACE_CONFIG'] == ':4096:8'\n"
        "    assert r['effective']['CUBLAS_WORKSPACE_CONFIG'] == ':4096:8'\n"
        "    assert not torch.cuda.is_initialized()\n"
        "assert 'CUBLAS_WORKSPACE_CONFIG' not in os.environ\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "ok", out.stderr
