"""Noise settings: which sources of randomness vary between replicas, and the kernel mode.

A *setting* answers two questions for a set of replicas of one recipe:

* which **algorithmic** sources (weight init, data order, augmentation, dropout) get a fresh
  seed per replica, and which stay fixed;
* whether the **tooling** runs deterministic kernels or may pick non-deterministic ones.

The four settings of Zhuang et al. (2022) plus single-source presets and the smallest
perturbation (one weight moved by one ULP, after Summers & Dinneen 2021) live in `SETTINGS`,
with the paper's narrower ALGO and ALGO+IMPL as its code realises them (ALGO-PAPER,
ALGO+IMPL-PAPER: only initialisation and data order vary; augmentation seeds stay fixed).
Precision and thread count are tooling factors passed beside the setting.

Nothing here touches torch's global state at import; `configure_determinism` does, records
what it did, and restores the previous state on exit.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, field

import torch

# ----------------------------------------------------------------------------- sources
SOURCES = ("init", "order", "aug", "dropout")
# The ULP poke picks its weight from a stream of its own, so that it never shifts another source.
STREAMS = SOURCES + ("perturb",)
PRECISIONS = ("fp32", "tf32", "bf16")


@dataclass(frozen=True)
class NoiseSetting:
    """What varies between the replicas of one cell of the study."""

    name: str
    varied: frozenset[str]  # algorithmic sources seeded per replica; the rest are fixed
    deterministic: bool  # deterministic kernels (torch.use_deterministic_algorithms etc.)
    perturb_ulp: bool = False  # move one weight of the initial model by one ULP per replica
    description: str = ""

    @property
    def expects_identical(self) -> bool:
        """Replicas must be bit-identical: nothing varies and kernels are deterministic."""
        return not self.varied and self.deterministic and not self.perturb_ulp


def _setting(name, varied, deterministic, description, perturb_ulp=False):
    return NoiseSetting(name, frozenset(varied), deterministic, perturb_ulp, description)


# What the paper's code seeds per run (PAPER-PROTOCOL.md): initialisation and data order, nothing else.
PAPER_VARIED = ("init", "order")

SETTINGS: dict[str, NoiseSetting] = {
    s.name: s
    for s in [
        _setting("ALGO+IMPL", SOURCES, False, "every algorithmic source varies; non-deterministic kernels"),
        _setting("ALGO", SOURCES, True, "every algorithmic source varies; deterministic kernels"),
        _setting("IMPL", (), False, "algorithmic sources fixed; non-deterministic kernels"),
        _setting("CONTROL", (), True, "nothing varies; deterministic kernels: replicas must be bit-identical"),
        _setting("INIT", ("init",), True, "only weight initialisation varies"),
        _setting("ORDER", ("order",), True, "only the data order varies"),
        _setting("AUG", ("aug",), True, "only the augmentation draws vary"),
        _setting("DROPOUT", ("dropout",), True, "only the dropout masks vary"),
        _setting("ULP", (), True, "one weight of the initial model moved by one ULP", perturb_ulp=True),
        # The paper's code varies only the weight-init and data-order seeds: its augmentation seeds are
        # hard-coded in every setting and it uses no dropout. ALGO and ALGO+IMPL above go further on
        # purpose (every algorithmic source); these two are the paper's own, for plans/paper.yaml.
        _setting(
            "ALGO+IMPL-PAPER",
            PAPER_VARIED,
            False,
            "the paper's ALGO+IMPL: initialisation and data order vary, augmentation fixed; non-deterministic kernels",
        ),
        _setting(
            "ALGO-PAPER",
            PAPER_VARIED,
            True,
            "the paper's ALGO: initialisation and data order vary, augmentation fixed; deterministic kernels",
        ),
    ]
}
PAPER_SETTINGS = ("ALGO+IMPL", "ALGO", "IMPL", "CONTROL")


def get_setting(name: str) -> NoiseSetting:
    """The named preset; a clear error lists the valid names."""
    if name not in SETTINGS:
        raise ValueError(f"unknown setting {name!r}; valid settings: {', '.join(SETTINGS)}")
    return SETTINGS[name]


# ----------------------------------------------------------------------------- seeds
def stream_seed(base_seed: int, replica: int, stream: str, setting: NoiseSetting) -> int:
    """The seed of one random stream of one replica.

    A fixed source uses replica index 0 for every replica, a varied one the replica's own index.
    Seeds come from SHA-256 of (base seed, replica, stream), so streams are independent of each
    other and adding a stream never shifts another (unlike drawing seeds from one generator).
    """
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; valid streams: {', '.join(STREAMS)}")
    varies = stream in setting.varied or (stream == "perturb" and setting.perturb_ulp)
    key = f"{base_seed}/{replica if varies else 0}/{stream}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1  # < 2**63


def replica_seeds(base_seed: int, replica: int, setting: NoiseSetting) -> dict[str, int]:
    return {s: stream_seed(base_seed, replica, s, setting) for s in STREAMS}


def make_generators(seeds: dict[str, int], device: str | torch.device = "cpu") -> dict[str, torch.Generator]:
    """One independent torch.Generator per stream, on the device whose ops draw from it."""
    gens = {}
    for stream, seed in seeds.items():
        # init and the ULP poke run on the CPU (weights are built there, then moved), so that
        # a model starts identical on every device; per-batch draws live on the device.
        dev = "cpu" if stream in ("init", "perturb") else device
        g = torch.Generator(device=dev)
        g.manual_seed(seed)
        gens[stream] = g
    return gens


def perturb_one_ulp(model: torch.nn.Module, generator: torch.Generator) -> dict:
    """Move one weight, chosen by `generator`, to the next float towards +inf (Summers & Dinneen).

    Returns where it happened so the manifest can record it.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.dtype.is_floating_point]
    sizes = torch.tensor([p.numel() for _, p in params])
    flat = int(torch.randint(int(sizes.sum()), (1,), generator=generator))
    offsets = torch.cumsum(sizes, 0)
    which = int(torch.searchsorted(offsets, flat, right=True))
    name, p = params[which]
    index = flat - (int(offsets[which - 1]) if which else 0)
    with torch.no_grad():
        view = p.view(-1)
        old = view[index].clone()
        new = torch.nextafter(old, torch.tensor(float("inf"), dtype=old.dtype, device=old.device))
        view[index] = new
    return {"parameter": name, "index": index, "old": float(old), "new": float(new)}


# ----------------------------------------------------------------------------- backend flags
@dataclass
class BackendConfig:
    """Tooling knobs one run uses. Everything is recorded; nothing is set silently."""

    deterministic: bool
    threads: int | None = None  # torch intra-op threads; None leaves the current value
    precision: str = "fp32"  # fp32 (TF32 off), tf32 (TF32 matmul/conv on CUDA), bf16 (autocast)
    # torch.use_deterministic_algorithms(True) turns on NaN-filling of torch.empty; it costs time
    # and is not needed for determinism. None keeps torch's default (on with the flag).
    fill_uninitialized_memory: bool | None = None
    # cuBLAS workspace: torch 2.14 no longer requires it and it can slow cuBLASLt; a factor only.
    cublas_workspace_config: str | None = None
    cudnn_benchmark: bool | None = None  # None: the opposite of `deterministic` (paper's setup)
    extra: dict = field(default_factory=dict)


def _cuda_initialized() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _read_flags() -> dict:
    """Every backend flag this module may touch, as torch reports it now (effective values)."""
    flags = {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "fill_uninitialized_memory": bool(torch.utils.deterministic.fill_uninitialized_memory),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "num_threads": torch.get_num_threads(),
        "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }
    # Only the fp32_precision API (torch >= 2.9) is read: reading the legacy allow_tf32 flags
    # raises once the new API has set conv and RNN differently.
    for name, backend in _PRECISION_BACKENDS.items():
        flags[f"{name}_fp32_precision"] = backend.fp32_precision
    return flags


# The TF32 switches of torch >= 2.9 (they supersede allow_tf32, which the project never sets:
# torch raises when the legacy and new APIs disagree).
_PRECISION_BACKENDS = {
    "cuda_matmul": torch.backends.cuda.matmul,
    "cudnn_conv": torch.backends.cudnn.conv,
    "cudnn_rnn": torch.backends.cudnn.rnn,
}


def _set_fp32_precision(tf32: bool) -> None:
    for backend in _PRECISION_BACKENDS.values():
        backend.fp32_precision = "tf32" if tf32 else "ieee"


def precision_error(precision) -> str | None:
    """Why `precision` is not one of `PRECISIONS` (None when it is): the one check of a precision.

    Here, not with the notebook's parameters, because `configure_determinism` would otherwise treat
    an unknown precision as fp32 without a word.
    """
    if precision not in PRECISIONS:
        return f"unknown precision {precision!r}; valid precisions: {', '.join(PRECISIONS)}"
    return None


def validate_backend(cfg: BackendConfig) -> None:
    """Refuse a precision or cuBLAS workspace this module does not know before touching any flag.

    The thread count is judged where it enters (`params`, the plan, the CLIs); torch itself refuses
    one that is not a positive integer.
    """
    if e := precision_error(cfg.precision):
        raise ValueError(e)
    if cfg.cublas_workspace_config not in (None, ":4096:8", ":16:8"):
        raise ValueError(
            f"unknown CUBLAS_WORKSPACE_CONFIG {cfg.cublas_workspace_config!r}; valid: None, ':4096:8', ':16:8'"
        )


@contextlib.contextmanager
def configure_determinism(cfg: BackendConfig):
    """Apply `cfg` for the duration of the block; yield a record of requested and effective flags.

    The record is a dict ``{"requested": {...}, "effective": {...}}``; effective values are read
    back from torch after setting, so a flag that did not take is visible. The previous state is
    restored on exit, so a notebook or test can run several settings in one process.
    """
    validate_backend(cfg)
    before = _read_flags()
    env_before = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    benchmark = (not cfg.deterministic) if cfg.cudnn_benchmark is None else cfg.cudnn_benchmark
    requested = {
        "deterministic_algorithms": cfg.deterministic,
        "fill_uninitialized_memory": cfg.deterministic
        if cfg.fill_uninitialized_memory is None
        else cfg.fill_uninitialized_memory,
        "cudnn_deterministic": cfg.deterministic,
        "cudnn_benchmark": benchmark,
        "tf32": cfg.precision == "tf32",
        "autocast_bf16": cfg.precision == "bf16",
        "num_threads": cfg.threads,
        "CUBLAS_WORKSPACE_CONFIG": cfg.cublas_workspace_config,
    }
    if cfg.cublas_workspace_config is not None and _cuda_initialized() and env_before != cfg.cublas_workspace_config:
        # cuBLAS reads the variable when its handle is created: too late once CUDA is running.
        raise RuntimeError(
            "CUBLAS_WORKSPACE_CONFIG must be set before CUDA initialises; start a fresh process "
            f"(requested {cfg.cublas_workspace_config!r}, current {env_before!r})"
        )
    try:
        if cfg.cublas_workspace_config is not None:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cfg.cublas_workspace_config
        torch.use_deterministic_algorithms(cfg.deterministic)
        # Set after the flag: use_deterministic_algorithms(True) switches the fill on itself.
        torch.utils.deterministic.fill_uninitialized_memory = requested["fill_uninitialized_memory"]
        torch.backends.cudnn.deterministic = cfg.deterministic
        torch.backends.cudnn.benchmark = benchmark
        _set_fp32_precision(cfg.precision == "tf32")
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        yield {"requested": requested, "effective": _read_flags()}
    finally:
        torch.use_deterministic_algorithms(
            before["deterministic_algorithms"], warn_only=before["deterministic_warn_only"]
        )
        torch.utils.deterministic.fill_uninitialized_memory = before["fill_uninitialized_memory"]
        torch.backends.cudnn.deterministic = before["cudnn_deterministic"]
        torch.backends.cudnn.benchmark = before["cudnn_benchmark"]
        for name, backend in _PRECISION_BACKENDS.items():
            backend.fp32_precision = before[f"{name}_fp32_precision"]
        torch.set_num_threads(before["num_threads"])
        if env_before is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = env_before


def autocast(device: str | torch.device, precision: str):
    """The autocast context for a precision (bf16 only; fp32 and tf32 run without autocast)."""
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
