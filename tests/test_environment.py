"""Hardware labels and the software fingerprint recorded with every run."""

import os
import subprocess
import sys

import pytest
import torch

from nnrandomness import environment


def test_cpu_label_carries_the_thread_count():
    assert environment.hardware_label("cpu", 2) == "cpu-2t"
    assert environment.hardware_label("cpu") == f"cpu-{torch.get_num_threads()}t"


def test_a_cpu_capability_other_than_default_is_part_of_the_label():
    """Each CPU tooling configuration is a hardware of its own; the default labels stay as committed."""
    assert environment.hardware_label("cpu", 1, "default") == "cpu-1t"
    assert environment.hardware_label("cpu", 2, "avx2") == "cpu-2t-avx2"
    assert environment.hardware_label("cpu", 4, "avx512") == "cpu-4t-avx512"


@pytest.fixture
def avx512_machine(monkeypatch):
    """This process as on an AVX512 CPU started without ATEN_CPU_CAPABILITY (torch dispatches to AVX512)."""
    monkeypatch.setattr(environment, "supported_cpu_capabilities", lambda: ("default", "avx2", "avx512"))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)


def test_the_capability_asked_for_must_be_the_one_torch_dispatches_to(avx512_machine):
    assert environment.expected_cpu_capability("default") == "AVX512"  # the machine's best
    assert environment.expected_cpu_capability("avx2") == "AVX2"
    assert environment.cpu_capability_error("default") is None
    assert environment.cpu_capability_error("avx512") is None  # what torch picks anyway: the same kernels
    e = environment.cpu_capability_error("avx2")
    assert "torch in this process dispatches to AVX512, not AVX2" in e
    assert "start the kernel (jupyter, python) with ATEN_CPU_CAPABILITY=avx2" in e


def test_default_asks_for_the_variable_unset(avx512_machine, monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")  # started with avx2
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    e = environment.cpu_capability_error("default")
    assert "dispatches to AVX2, not AVX512 (ATEN_CPU_CAPABILITY='avx2')" in e
    assert "ATEN_CPU_CAPABILITY unset (env -u ATEN_CPU_CAPABILITY)" in e
    assert environment.cpu_capability_env("default") is None and environment.cpu_capability_env("avx2") == "avx2"


def test_a_capability_the_cpu_lacks_is_refused(monkeypatch):
    monkeypatch.setattr(environment, "supported_cpu_capabilities", lambda: ("default", "avx2"))
    e = environment.cpu_capability_error("avx512")
    assert e.startswith("cpu_capability 'avx512': this machine's CPU (") and e.endswith("supported here: default, avx2")
    assert environment.unsupported_cpu_capability_error("avx2") is None


def test_support_is_read_from_cpu_flags_where_torch_cannot_tell(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx2_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_supported", raising=False)
    monkeypatch.setattr(environment, "_cpu_flags", lambda: {"avx2", "fma", "avx512f", "avx512vl"})
    assert environment.supported_cpu_capabilities() == ("default", "avx2")  # no avx512bw/dq: not torch's AVX512
    monkeypatch.setattr(environment, "_cpu_flags", lambda: {"avx2", "fma", "avx512vl", "avx512bw", "avx512dq"})
    assert environment.supported_cpu_capabilities() == ("default", "avx2", "avx512")
    monkeypatch.setattr(environment, "_cpu_flags", set)
    assert environment.supported_cpu_capabilities() == ("default",)


@pytest.mark.skipif(
    "avx2" not in environment.supported_cpu_capabilities(), reason="this CPU has no AVX2: torch cannot dispatch to it"
)
def test_a_process_started_with_the_variable_dispatches_to_it_and_records_it():
    """In a fresh process (torch reads the variable once): the check passes, the fingerprint records it."""
    code = (
        "from nnrandomness import environment as e\n"
        "fp = e.fingerprint('cpu')\n"
        "print(e.cpu_capability_error('avx2'), fp['cpu_capability'], fp['env']['ATEN_CPU_CAPABILITY'])\n"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["None", "AVX2", "avx2"], out.stderr


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
