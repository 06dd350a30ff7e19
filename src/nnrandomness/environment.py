"""The environment a run used: hardware label and software fingerprint, recorded with every run."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

# The CPU instruction set torch dispatches to changes float bits, so it belongs to the record.
CPU_ENV_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The torch device types the project trains on ("cuda:1" is of type "cuda").
DEVICE_TYPES = ("cpu", "cuda", "mps")


def device_type(device) -> str | None:
    """The type of a torch device string ("cuda" for "cuda:1"); None when torch cannot parse it."""
    try:
        return torch.device(device).type
    except (RuntimeError, TypeError):
        return None


def gpu_name(device: str | torch.device) -> str | None:
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return None


def hardware_label(
    device: str | torch.device = "cpu", threads: int | None = None, cpu_capability: str = "default"
) -> str:
    """A short path-safe label: 'cpu-2t' for the CPU at 2 threads, 'cuda-nvidia-h100-80gb-hbm3' for a GPU,
    and '-avx2' after either for a CPU capability other than "default" ('cpu-2t-avx2').

    Thread count and CPU capability are part of the label because they change the bits of CPU results:
    each CPU tooling configuration is a hardware of its own, and its replicas form their own cells.
    """
    device = torch.device(device)
    if device.type == "cuda":
        name = gpu_name(device) or "cuda"
        label = "cuda-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    else:
        label = f"{device.type}-{threads if threads is not None else torch.get_num_threads()}t"
    return label if cpu_capability == "default" else f"{label}-{cpu_capability}"


# ----------------------------------------------------------------------------- the ATen CPU capability
# The instruction sets torch's CPU kernels dispatch to, as the ATEN_CPU_CAPABILITY environment
# variable names them on x86 (torch 2.14, aten/src/ATen/native/DispatchStub.cpp: "avx512", "avx2",
# "default"; torch ignores any other value with a warning and picks the machine's best). Here
# "default" means the variable unset: torch's own pick for the machine (AVX512 on an AVX512 CPU).
# Torch's own "default" value (its scalar DEFAULT kernels) has no choice of its own here.
# torch reads the variable once, when it first dispatches, so a capability is chosen per process.
CPU_CAPABILITY_ENV = "ATEN_CPU_CAPABILITY"
CPU_CAPABILITIES = ("default", "avx2", "avx512")


def supported_cpu_capabilities() -> tuple[str, ...]:
    """The CPU_CAPABILITIES this machine's CPU can run ("default" always).

    torch's own test (torch.cpu._is_avx2_supported, _is_avx512_supported); where torch has no such
    function, the flags of /proc/cpuinfo that torch's dispatcher asks for (AVX2: avx2 and fma;
    AVX512: avx512 vl, bw, dq and fma). A capability the CPU lacks is refused before any work: torch
    would dispatch to what the variable names without checking (an illegal instruction).
    """
    flags = None
    supported = ["default"]
    for name, needs in (("avx2", {"avx2", "fma"}), ("avx512", {"avx512vl", "avx512bw", "avx512dq", "fma"})):
        check = getattr(torch.cpu, f"_is_{name}_supported", None)
        if check is None and flags is None:
            flags = _cpu_flags()
        if check() if check is not None else needs <= flags:
            supported.append(name)
    return tuple(supported)


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_capability_env(cpu_capability: str) -> str | None:
    """The value of ATEN_CPU_CAPABILITY that gives `cpu_capability`; None: the variable must be unset."""
    return None if cpu_capability == "default" else cpu_capability


def expected_cpu_capability(cpu_capability: str) -> str:
    """What torch.backends.cpu.get_cpu_capability() says in a process started with `cpu_capability`
    (a supported one): the machine's best for "default", else the capability in capitals."""
    if cpu_capability == "default":
        return supported_cpu_capabilities()[-1].upper()
    return cpu_capability.upper()


def unsupported_cpu_capability_error(cpu_capability: str) -> str | None:
    """Why this machine's CPU cannot run `cpu_capability` (one of CPU_CAPABILITIES); None when it can."""
    supported = supported_cpu_capabilities()
    if cpu_capability in supported:
        return None
    return (
        f"cpu_capability {cpu_capability!r}: this machine's CPU ({cpu_model()}) does not support it; "
        f"supported here: {', '.join(supported)}"
    )


def cpu_capability_error(cpu_capability: str) -> str | None:
    """Why this process cannot train with `cpu_capability` (one of CPU_CAPABILITIES); None when it can:
    the CPU lacks it, or torch in this process dispatches to another one (the variable was not set
    before the process started)."""
    if e := unsupported_cpu_capability_error(cpu_capability):
        return e
    effective, expected = torch.backends.cpu.get_cpu_capability(), expected_cpu_capability(cpu_capability)
    if effective == expected:
        return None
    value = cpu_capability_env(cpu_capability)
    start = f"{CPU_CAPABILITY_ENV}={value}" if value else f"{CPU_CAPABILITY_ENV} unset (env -u {CPU_CAPABILITY_ENV})"
    return (
        f"cpu_capability {cpu_capability!r}: torch in this process dispatches to {effective}, not {expected} "
        f"({CPU_CAPABILITY_ENV}={os.environ.get(CPU_CAPABILITY_ENV)!r}); torch reads the variable once per "
        f"process: start the kernel (jupyter, python) with {start}, or run the notebook through the batch "
        "runner, which sets it per job"
    )


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the checkout the package runs from (with '+dirty' if it has changes)."""
    cwd = Path(path) if path else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def tracked_by_git(path: str | Path) -> bool:
    """Whether git tracks any file under `path` (a committed run store, as data/runs is)."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.is_dir()), None)
    if existing is None or existing != path:
        return False  # nothing under a folder that does not exist yet is tracked
    try:
        out = subprocess.run(["git", "ls-files", "--", "."], cwd=path, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


def fingerprint(device: str | torch.device = "cpu") -> dict:
    """Everything about the machine and software that can change the bits of a result."""
    device = torch.device(device)
    cuda = torch.version.cuda
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": str(device),
        "gpu_name": gpu_name(device),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "numpy": _version("numpy"),
        "cuda": cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "num_threads": torch.get_num_threads(),
        "env": {k: os.environ.get(k) for k in CPU_ENV_VARS + ("CUBLAS_WORKSPACE_CONFIG", "CUDA_VISIBLE_DEVICES")},
        "git_commit": git_commit(),
    }


def float_machine() -> str:
    """What decides the bits of a CPU float result besides seeds and thread count: the CPU model,
    the instruction set torch dispatches to, and torch's version. Two machines with the same label
    give bit-identical CPU training; machines of one kind can differ (an AMD EPYC and an Intel
    Xeon, both AVX512, train the same seeds to different weights). Recorded in every executed
    chapter, so a test knows whether outputs of live training are comparable on this machine."""
    return f"{cpu_model()} | {torch.backends.cpu.get_cpu_capability()} | torch {torch.__version__}"
