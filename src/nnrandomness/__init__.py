"""nnrandomness: how much randomness neural-network training gets from its tooling.

The public surface the notebooks use; each name lives in the module named after its concern.
"""

from .cell import run_cell
from .data import Dataset, load_dataset
from .environment import fingerprint, hardware_label
from .locate import DivergenceReport, locate_divergence
from .models import build_model
from .noise import PAPER_SETTINGS, SETTINGS, BackendConfig, NoiseSetting, configure_determinism, get_setting
from .store import DeterminismViolation, load_runs, load_weights, prediction_matrix, replica_dir
from .train import ReplicaResult, ReplicaSpec, train_replica, validate_spec

__all__ = [
    "BackendConfig",
    "Dataset",
    "DivergenceReport",
    "DeterminismViolation",
    "NoiseSetting",
    "PAPER_SETTINGS",
    "ReplicaResult",
    "ReplicaSpec",
    "SETTINGS",
    "build_model",
    "configure_determinism",
    "fingerprint",
    "get_setting",
    "hardware_label",
    "load_dataset",
    "load_runs",
    "load_weights",
    "locate_divergence",
    "prediction_matrix",
    "replica_dir",
    "run_cell",
    "train_replica",
    "validate_spec",
]
