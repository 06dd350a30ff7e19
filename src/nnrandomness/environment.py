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


def hardware_label(device: str | torch.device = "cpu", threads: int | None = None) -> str:
    """A short path-safe label: 'cpu-2t' for the CPU at 2 threads, 'cuda-nvidia-h100-80gb-hbm3' for a GPU.

    Thread count is part of the CPU label because it changes the bits of CPU results.
    """
    device = torch.device(device)
    if device.type == "cuda":
        name = gpu_name(device) or "cuda"
        return "cuda-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"{device.type}-{threads if threads is not None else torch.get_num_threads()}t"


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
