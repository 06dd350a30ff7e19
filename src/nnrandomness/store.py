"""The run store: one directory per replica, complete only once its manifest is written.

Layout: ``<root>/<hardware>/<dataset>/<model>/<setting>/replica-<k>/`` holding

* ``predictions.parquet``: one row per test example (label, group, prediction, the softmax
  probabilities ``prob_<k>`` unless the spec keeps none, and ``prediction_epoch_<e>`` for every
  snapshot epoch e);
* ``history.parquet``: one row per epoch;
* ``weights.safetensors``: the final state_dict (parameters and buffers);
* ``manifest.json``: spec, seeds, environment, backend flags, timings, content hashes and the
  SHA-256 of every file above. It is written last, by atomic rename: a directory without a
  valid manifest, or whose files fail their checksums, is incomplete and never read as a result.

While a replica trains, its epoch checkpoint lives in the same directory; it is removed once
the manifest is in place. Every file lands by `files.write_atomic` (temporary, fsync, rename; a full disk
named with what was kept), and the writers of a store take `lock` on a directory (a job's
setting, a replica) so that two processes never write the same replica.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_weights

from .files import write_atomic

MANIFEST = "manifest.json"
FILES = ("predictions.parquet", "history.parquet", "weights.safetensors")
MANIFEST_VERSION = 1


# ----------------------------------------------------------------------------- path components
# The longest file name most file systems take (NAME_MAX, in bytes).
MAX_COMPONENT_BYTES = 255


def path_component_error(name) -> str | None:
    """Why `name` cannot be one component of a store path (None when it can).

    The one rule for every name that becomes a directory or file name (hardware label, dataset,
    model, setting; `params` judges the notebook's and the plans' values with it): a non-empty
    string of at most MAX_COMPONENT_BYTES bytes (UTF-8), neither "." nor "..", without a path
    separator ("/" or "\\"), NUL or any other control character. Such a name stays one directory
    below its parent: it can neither climb out of the store nor name the store itself.
    """
    if not isinstance(name, str):
        return f"must be a string, got {type(name).__name__}"
    if not name:
        return "must not be empty"
    if name in (".", ".."):
        return f"must not be {name!r} (it names a directory of the path itself)"
    if "/" in name or "\\" in name:
        return "must not hold a path separator ('/' or '\\')"
    if any(unicodedata.category(c) == "Cc" for c in name):  # NUL, newline, escape, DEL, ...
        return "must not hold NUL or another control character"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES:
        return f"must be at most {MAX_COMPONENT_BYTES} bytes long (MAX_COMPONENT_BYTES)"
    return None


def replica_dir(root, hardware: str, dataset: str, model: str, setting: str, replica: int) -> Path:
    """``<root>/<hardware>/<dataset>/<model>/<setting>/replica-<k>``; ValueError for a name that is
    no path component (`path_component_error`) or a replica that is no integer >= 0, so that no
    name can place a replica outside `root` (the callers check first: this is the last line)."""
    for what, name in zip(CELL, (hardware, dataset, model, setting)):
        if e := path_component_error(name):
            raise ValueError(f"{what} {e} (a path component of the store)")
    if isinstance(replica, bool) or not isinstance(replica, int) or replica < 0:
        raise ValueError(f"replica must be an integer >= 0, got {type(replica).__name__}")
    return Path(root) / hardware / dataset / model / setting / f"replica-{replica}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_hash(weights: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes in sorted name order: equal iff bit-identical."""
    h = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # reshape(-1) first: a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed as
        # bytes; the bytes of any other tensor are the same either way.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def predictions_hash(predictions: np.ndarray, probabilities: np.ndarray | None) -> str:
    """SHA-256 of the final predictions (int64) and probabilities (float32); of the predictions alone
    when a replica keeps no probabilities."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(predictions, dtype=np.int64).tobytes())
    if probabilities is not None:
        h.update(np.ascontiguousarray(probabilities, dtype=np.float32).tobytes())
    return h.hexdigest()


def snapshot_column(epoch: int) -> str:
    """The predictions.parquet column of the test predictions after `epoch`."""
    return f"prediction_epoch_{epoch}"


# How predictions.parquet is written when a replica keeps no probabilities (the large stores: 10,000
# test examples x ~750 replicas): the example ids 0..N-1 delta-encoded (dictionary-encoded they cost
# 40 KB of 10,000), zstd. 11 KB instead of 70 KB for 10,000 examples; a replica with probabilities
# keeps pandas' defaults, so the digits store's files stay byte for byte what they were.
def _compact(columns) -> dict:
    return {
        "compression": "zstd",
        "use_dictionary": [c for c in columns if c != "example"],
        "column_encoding": {"example": "DELTA_BINARY_PACKED"},
    }


def _class_dtype(num_classes: int):
    """The smallest integer type that holds every class index (int8 up to 127 classes)."""
    return np.int8 if num_classes <= np.iinfo(np.int8).max + 1 else np.int16


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ----------------------------------------------------------------------------- writing
CHECKPOINT = "checkpoint.pt"  # train's epoch checkpoint (train.CHECKPOINT: the store does not import train)


def sweep_temporaries(path: Path) -> list[Path]:
    """Remove every ``*.tmp-<pid>`` file of a replica directory (call it while no one writes there:
    under the job's lock, or once the replica is complete); the removed."""
    removed = sorted(Path(path).glob("*.tmp-*"))
    for tmp in removed:
        tmp.unlink(missing_ok=True)
    return removed


@contextmanager
def lock(path: Path, wait: bool = False) -> Iterator[bool]:
    """Hold an exclusive lock on directory `path` (created if missing) for the block; yields
    False, holding nothing, when another process holds it and `wait` is false.

    flock(2) on the directory itself: no lock file is left in the store, and the operating system
    releases the lock when its holder dies, however it dies. Runners on one store lock each job's
    setting directory, so that they split the jobs instead of both doing every one.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def write_replica(root, hardware: str, result, *, resources: dict | None = None, kernels: dict | None = None) -> Path:
    """Write one replica's result; the manifest goes last, by atomic rename. Returns the directory.

    resources: what the replica's training used (`RESOURCES`: its process, "own" or "shared", and
    peak device and host memory in bytes); kernels: what a few of its steps ran (`train.KernelRecorder.result`:
    kind, sorted names, their hash, steps, seconds). Both recorded as given (None: not measured).

    result: a `train.ReplicaResult`, duck-typed (store is on the ground floor and imports nothing
    of train): read are its spec (dataset, model, setting, replica, noise, to_dict()), seeds,
    history, predictions, probabilities (None: none kept), labels, groups, weights, backend,
    environment, perturbation, timings, resumed_from_epoch, snapshots and extra_tests.

    Every file is serialised in memory and written by `files.write_atomic`, so that a full disk raises an
    OSError naming the file and what was kept (the replica's checkpoint: a re-run resumes from it);
    such a failure leaves no manifest, so the directory never looks complete.
    """
    spec = result.spec
    out = replica_dir(root, hardware, spec.dataset, spec.model, spec.setting, spec.replica)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # an overwrite is incomplete until its new manifest lands
    kept = (
        f"{out / CHECKPOINT} (a re-run resumes from it); no manifest, so the replica counts as incomplete"
        if (out / CHECKPOINT).exists()
        else "no manifest, so the replica counts as incomplete"
    )

    n = len(result.predictions)
    # A multi-label replica's (N, K) 0/1 labels and predictions are stored as K-bit masks, one row per
    # example as for every other replica (`pack_bits`; the manifest's "labels" names the bits).
    multilabel = result.labels.ndim == 2
    encode = pack_bits if multilabel else (lambda a: a.astype(np.int64))
    preds = pd.DataFrame(
        {
            "example": np.arange(n, dtype=np.int64),
            "label": encode(result.labels),
            "group": (result.groups if result.groups is not None else np.full(n, -1)).astype(np.int64),
            "prediction": encode(result.predictions),
        }
    )
    columns = [preds]
    if result.probabilities is not None:
        c = result.probabilities.shape[1]
        columns.append(pd.DataFrame(result.probabilities, columns=[f"prob_{k}" for k in range(c)]))
    snapshots = result.snapshots
    if snapshots and multilabel:
        columns.append(pd.DataFrame({snapshot_column(e): pack_bits(p) for e, p in sorted(snapshots.items())}))
    elif snapshots:  # a small integer type: 10,000 examples cost 10 KB per snapshot instead of 80
        dtype = _class_dtype(int(max(result.labels.max(), *(p.max() for p in snapshots.values()))) + 1)
        columns.append(pd.DataFrame({snapshot_column(e): p.astype(dtype) for e, p in sorted(snapshots.items())}))
    table = pd.concat(columns, axis=1)
    contents = {
        "predictions.parquet": table.to_parquet(
            index=False, **(_compact(table.columns) if result.probabilities is None else {})
        ),
        "history.parquet": result.history.to_parquet(index=False),
        "weights.safetensors": save_weights({k: v.contiguous() for k, v in result.weights.items()}),
    }
    for name in FILES:
        write_atomic(out / name, contents[name], kept)

    final = result.history.iloc[-1].to_dict() if len(result.history) else {}
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "hardware": hardware,
        "spec": spec.to_dict(),
        "seeds": result.seeds,
        "setting": {
            "name": spec.setting,
            "varied": sorted(spec.noise.varied),
            "deterministic": spec.noise.deterministic,
            "perturb_ulp": spec.noise.perturb_ulp,
        },
        "backend": result.backend,
        "environment": result.environment,
        "perturbation": result.perturbation,
        "timings": result.timings,
        "resumed_from_epoch": result.resumed_from_epoch,
        "has_probabilities": result.probabilities is not None,
        "snapshot_epochs": sorted(snapshots),
        **({"labels": label_encoding(result)} if multilabel else {}),
        "extra_tests": result.extra_tests,
        "resources": resources,
        "kernels": kernels,
        "final": {k: float(v) for k, v in final.items()},
        "weights_hash": weights_hash(result.weights),
        "predictions_hash": predictions_hash(result.predictions, result.probabilities),
        # Of the bytes written, not re-read from disk: what was meant to land is what is checked later.
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()},
    }
    text = json.dumps(manifest, indent=1, sort_keys=True, default=_json_default)
    write_atomic(out / MANIFEST, text.encode(), kept)
    (out / CHECKPOINT).unlink(missing_ok=True)
    sweep_temporaries(out)  # a killed writer's leftovers: nothing but the replica stays
    return out


# ----------------------------------------------------------------------------- reading
# What a manifest must hold for its readers (load_runs, the runner's store state, the chapters),
# as far as they read it: key -> type, or a nested schema for a mapping. Other keys may be present
# (older or newer writers add some); a null where a type is due is malformed. The setting's
# meaning (varied, deterministic, perturb_ulp) is how the view interprets a replica.
MANIFEST_SCHEMA: dict = {
    "manifest_version": int,
    "hardware": str,
    "spec": {
        "dataset": str,
        "model": str,
        "setting": str,
        "replica": int,
        "base_seed": int,
        "epochs": int,
        "threads": int,
        "device": str,
        "precision": str,
    },
    "setting": {"name": str, "varied": list, "deterministic": bool, "perturb_ulp": bool},
    "environment": dict,
    "timings": dict,
    "final": dict,
    "weights_hash": str,
    "predictions_hash": str,
    "files": {name: str for name in FILES},
}


def manifest_error(manifest) -> str | None:
    """Why a parsed manifest does not have the shape of MANIFEST_SCHEMA (None when it does): the first
    problem, named by its place (e.g. ``spec.dataset``). Also: the setting's sources are names, final
    and timings map names to numbers (or null), and the hardware label is a path component."""
    if e := _shape_error(manifest, MANIFEST_SCHEMA, ""):
        return e
    if not all(isinstance(v, str) for v in manifest["setting"]["varied"]):
        return "setting.varied must be a list of source names (strings)"
    for key in ("final", "timings"):  # the view copies numbers from both
        if not all(v is None or _json_type(v) == "a number" for v in manifest[key].values()):
            return f"{key} must map names to numbers"
    if e := path_component_error(manifest["hardware"]):
        return f"hardware {e}"
    return _optional_error(manifest)


def _optional_error(manifest: dict) -> str | None:
    """The keys that newer writers add (absent from older manifests), checked where present:
    has_probabilities, snapshot_epochs, extra_tests (null, or lists seeds, n, accuracy of one length),
    resources and kernels (null, or objects of their shape: `_measured_error`)."""
    if e := _measured_error(manifest):
        return e
    if not isinstance(manifest.get("has_probabilities", True), bool):
        return "has_probabilities must be true/false"
    epochs = manifest.get("snapshot_epochs", [])
    if not isinstance(epochs, list) or not all(isinstance(e, int) and not isinstance(e, bool) for e in epochs):
        return "snapshot_epochs must be a list of integers"
    extra = manifest.get("extra_tests")
    if extra is None:
        return None
    if not isinstance(extra, dict) or not all(isinstance(extra.get(k), list) for k in ("seeds", "n", "accuracy")):
        return "extra_tests must be null or an object with lists seeds, n and accuracy"
    if not len(extra["seeds"]) == len(extra["n"]) == len(extra["accuracy"]):
        return "extra_tests.seeds, n and accuracy must have one length"
    if not all(_json_type(v) == "a number" for k in ("seeds", "n", "accuracy") for v in extra[k]):
        return "extra_tests must hold numbers"
    return None


# What a replica's training used and ran (written since process-per-replica; absent from older
# manifests, loaded as None): key -> the JSON types allowed (null: not measured).
RESOURCES = {"process": (str,), "peak_device_bytes": (int, type(None)), "peak_host_bytes": (int, type(None))}
KERNELS = {"kind": (str,), "names": (list,), "hash": (str,), "steps": (int,), "seconds": (int, float)}


def _measured_error(manifest: dict) -> str | None:
    """Why the manifest's resources or kernels (where present and not null) are not of the shape of
    RESOURCES and KERNELS; None when they are."""
    for key, shape in (("resources", RESOURCES), ("kernels", KERNELS)):
        value = manifest.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            return f"{key} must be null or an object, got {_json_type(value)}"
        for name, types in shape.items():
            v = value.get(name)
            if isinstance(v, bool) or not isinstance(v, types):
                return f"{key}.{name} must be {' or '.join(_JSON_NAMES[t] for t in types)}, got {_json_type(v)}"
    kernels = manifest.get("kernels")
    if kernels is not None and not all(isinstance(n, str) for n in kernels["names"]):
        return "kernels.names must be a list of strings"
    return None


_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", list: "a list", type(None): "null"}


def _shape_error(value, schema: dict, where: str) -> str | None:
    if not isinstance(value, dict):
        return f"{where or 'the manifest'} must be an object, got {_json_type(value)}"
    for key, expected in schema.items():
        place = f"{where}.{key}" if where else key
        if key not in value:
            return f"missing key {place!r}"
        if isinstance(expected, dict):
            if e := _shape_error(value[key], expected, place):
                return e
        elif (isinstance(value[key], bool) and expected is not bool) or not isinstance(value[key], expected):
            return f"{place} must be {_TYPE_NAMES[expected]}, got {_json_type(value[key])}"
    return None


# The JSON names of the schema's types, for messages (a message names a type, never the value).
_TYPE_NAMES = {int: "an integer", str: "a string", bool: "true/false", list: "a list", dict: "an object"}


def _json_type(value) -> str:
    """The JSON name of a parsed value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "a string", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def read_manifest(path: Path, verify: bool = True) -> dict:
    """The manifest of a replica directory; raises ValueError when it is missing, unreadable, not of
    the shape of MANIFEST_SCHEMA (`manifest_error`), or (with verify) when a file fails its checksum."""
    path = Path(path)
    mf = path / MANIFEST
    if not mf.exists():
        raise ValueError("no manifest (incomplete or interrupted replica)")
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"unreadable manifest: {str(e)[:200]}") from None
    except OSError as e:
        raise ValueError(f"unreadable manifest: {e.strerror or e}") from None
    if e := manifest_error(manifest):
        raise ValueError(f"malformed manifest: {e}")
    for name in FILES:
        if not (path / name).exists():
            raise ValueError(f"{name} is missing")
        if verify and sha256_file(path / name) != manifest["files"][name]:
            raise ValueError(f"{name} fails its SHA-256 checksum")
    return manifest


def is_complete(path: Path, verify: bool = True) -> bool:
    try:
        read_manifest(path, verify)
        return True
    except ValueError:
        return False


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "weights.safetensors"))


KEYS = ["hardware", "dataset", "model", "setting", "replica"]
CELL = KEYS[:-1]  # one cell of the study: the replicas of one setting on one (hardware, dataset, model)
# The setting's meaning as its manifest records it: a replica is interpreted with what it ran with,
# never with today's noise.SETTINGS.
MEANING = ["varied", "deterministic", "perturb_ulp"]


@dataclass(frozen=True, eq=False)
class Cell:
    """One cell of the store with its (R, N) prediction matrix, built once by :meth:`Runs.iter_cells`."""

    key: dict  # hardware, dataset, model, setting
    preds: np.ndarray  # (R, N) int64 predicted classes; row r is replica ``replica_ids[r]``
    labels: np.ndarray  # (N,) int64 true classes
    groups: np.ndarray  # (N,) int64 group attribute; -1 where the dataset has none
    replicas: pd.DataFrame  # the cell's rows of Runs.replicas, by ascending replica id
    predictions: pd.DataFrame  # the cell's rows of Runs.predictions (one per replica and example)
    meaning: dict  # the setting's recorded meaning: varied (frozenset of sources), deterministic, perturb_ulp

    @property
    def replica_ids(self) -> list[int]:
        return [int(r) for r in self.replicas["replica"]]

    @property
    def examples(self) -> np.ndarray:
        """The store's example ids of the matrix columns, ascending."""
        return np.sort(self.predictions["example"].unique())

    @property
    def has_groups(self) -> bool:
        return bool((self.groups >= 0).all())  # the store writes -1 where a dataset has no group attribute


@dataclass
class Runs:
    """A view of the run store: tidy frames, one row per replica (and example, or epoch), that
    selects by key (:meth:`select`) and iterates its cells (:meth:`iter_cells`). A view is read,
    not edited: its cells are built from the frames once, on the first iteration."""

    replicas: pd.DataFrame  # hardware, dataset, model, setting, replica, path, hashes, final metrics, meaning
    predictions: pd.DataFrame  # ... + example, label, group, prediction, correct
    history: pd.DataFrame  # ... + epoch, lr, losses, accuracies, seconds
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of skipped dirs
    _cells: list[Cell] | None = field(default=None, init=False, repr=False, compare=False)

    def cells(self) -> pd.DataFrame:
        """One row per (hardware, dataset, model, setting) with its number of replicas."""
        return self.replicas.groupby(CELL, as_index=False).size().rename(columns={"size": "replicas"})

    def subset(self, keep: Callable[[pd.DataFrame], np.ndarray]) -> Runs:
        """The rows of every frame for which ``keep(frame)`` (a boolean array) holds."""

        def sub(df: pd.DataFrame) -> pd.DataFrame:
            rows = df if df.empty else df[np.asarray(keep(df), dtype=bool)]
            return rows.reset_index(drop=True)

        return Runs(sub(self.replicas), sub(self.predictions), sub(self.history), list(self.problems))

    def select(self, **key) -> Runs:
        """The part of the view matching every ``name=value`` (hardware, dataset, model, setting,
        replica); a list, tuple or set of values matches any of them."""
        unknown = set(key) - set(KEYS)
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)}; valid keys: {', '.join(KEYS)}")

        def keep(df: pd.DataFrame) -> np.ndarray:
            mask = np.ones(len(df), dtype=bool)
            for k, v in key.items():
                mask &= (df[k].isin(list(v)) if isinstance(v, (list, tuple, set, frozenset)) else df[k] == v).to_numpy()
            return mask

        return self.subset(keep)

    def iter_cells(self) -> Iterator[Cell]:
        """Every cell with predictions, in sorted key order (matrices built once per view)."""
        if self._cells is None:
            self._cells = list(self._build_cells())
        yield from self._cells

    def _build_cells(self) -> Iterator[Cell]:
        p = self.predictions
        if p.empty or "example" not in p.columns:
            return
        replicas = {key: frame for key, frame in self.replicas.groupby(CELL, sort=True)}
        for key, frame in p.groupby(CELL, sort=True):
            preds, labels, groups = prediction_matrix(frame)
            reps = replicas[key].sort_values("replica", ignore_index=True)
            yield Cell(
                dict(zip(CELL, key)),
                preds.astype(np.int64),
                labels.astype(np.int64),
                groups.astype(np.int64),
                reps,
                frame,
                _recorded_meaning(key[-1], reps),
            )


def _recorded_meaning(name: str, replicas: pd.DataFrame) -> dict:
    """The one meaning the manifests of a cell's replicas record for its setting (the keyword
    arguments of noise.NoiseSetting besides the name)."""
    meanings = {(tuple(v), bool(d), bool(u)) for v, d, u in zip(*(replicas[c] for c in MEANING))}
    if len(meanings) != 1:
        raise ValueError(
            f"the replicas of setting {name} record {len(meanings)} different meanings: {sorted(meanings)}"
        )
    varied, deterministic, perturb_ulp = meanings.pop()
    return {"varied": frozenset(varied), "deterministic": deterministic, "perturb_ulp": perturb_ulp}


def iter_replica_dirs(root, **filters):
    """Replica directories under root matching filters (hardware=, dataset=, model=, setting=)."""
    unknown = set(filters) - set(CELL)
    if unknown:
        raise ValueError(f"unknown filter(s) {sorted(unknown)}; valid filters: {', '.join(CELL)}")
    for k, v in filters.items():  # a filter such as hardware=".." would read beside the store
        if v and (e := path_component_error(v)):
            raise ValueError(f"filter {k} {e}")
    pattern = "/".join(str(filters.get(k) or "*") for k in CELL) + "/replica-*"
    yield from sorted(p for p in Path(root).glob(pattern) if p.is_dir())


def load_runs(root, *, probabilities: bool = False, snapshots: bool = False, verify: bool = True, **filters) -> Runs:
    """Load every complete replica under `root`. Incomplete or damaged ones (a manifest missing,
    unreadable or of the wrong shape, e.g. recording no meaning of its setting; a file failing its
    checksum) are reported in `problems` with their path and reason (and a warning is printed),
    never returned as results.

    probabilities: keep the ``prob_<k>`` columns; a ValueError names the replicas written without
    them (keep_probabilities false). snapshots: keep the ``prediction_epoch_<e>`` columns (the
    predictions after epoch e; `prediction_matrix(cell.predictions, snapshot_column(e))`).
    `replicas` lists, per replica, ``has_probabilities``, ``snapshot_epochs`` and the accuracy and
    size of each extra test set, ``extra_accuracy`` and ``extra_n`` (empty lists where the dataset has none).
    """
    rows, preds, hists, problems, without = [], [], [], [], []
    for path in iter_replica_dirs(root, **filters):
        try:  # a manifest of the wrong shape is refused here, before anything below reads it
            m = read_manifest(path, verify)
        except ValueError as e:
            problems.append((str(path), str(e)))
            continue
        meaning, s = m["setting"], m["spec"]
        key = {
            "hardware": m["hardware"],
            "dataset": s["dataset"],
            "model": s["model"],
            "setting": s["setting"],
            "replica": s["replica"],
        }
        rows.append(
            {
                **key,
                "path": str(path),
                "base_seed": s["base_seed"],
                "epochs": s["epochs"],
                "threads": s["threads"],
                "device": s["device"],
                "precision": s["precision"],
                "weights_hash": m["weights_hash"],
                "predictions_hash": m["predictions_hash"],
                "test_accuracy": m["final"].get("test_accuracy"),
                "train_seconds": m["timings"].get("train_seconds"),
                "git_commit": m["environment"].get("git_commit"),
                "torch": m["environment"].get("torch"),
                "cpu_model": m["environment"].get("cpu_model"),
                "gpu_name": m["environment"].get("gpu_name"),
                "varied": tuple(sorted(meaning["varied"])),
                "deterministic": bool(meaning["deterministic"]),
                "perturb_ulp": bool(meaning["perturb_ulp"]),
                # Multi-label replicas (CelebA's 40 attributes) store bit masks, not class indices (`unpack_bits`).
                "multilabel": multilabel_names(m) is not None,
                "label_names": multilabel_names(m),  # the bit masks' output names, in bit order; None: classes
                # Written by every writer since the MNIST-1D testbed; older manifests kept probabilities.
                "has_probabilities": bool(m.get("has_probabilities", True)),
                "snapshot_epochs": list(m.get("snapshot_epochs") or []),
                "extra_accuracy": list((m.get("extra_tests") or {}).get("accuracy", [])),
                "extra_n": list((m.get("extra_tests") or {}).get("n", [])),
                # Written since process-per-replica; None where an older manifest has none.
                **resource_columns(m),
            }
        )
        if probabilities and not rows[-1]["has_probabilities"]:
            without.append(str(path))
        p = pd.read_parquet(path / "predictions.parquet")
        keep = ["example", "label", "group", "prediction"]
        keep += [c for c in p.columns if (probabilities and c.startswith("prob_"))]
        keep += [c for c in p.columns if (snapshots and c.startswith("prediction_epoch_"))]
        preds.append((key, p[keep]))
        hists.append((key, pd.read_parquet(path / "history.parquet")))
    if without:
        raise ValueError(
            f"{len(without)} replica(s) hold no probabilities (trained with keep_probabilities false): "
            f"{without[:3]}; load with probabilities=False, or re-run them with keep_probabilities true"
        )
    if problems:
        import warnings

        warnings.warn(f"skipped {len(problems)} incomplete or damaged replica(s): {problems[:3]}", stacklevel=2)

    def order(df: pd.DataFrame, extra: list[str]) -> pd.DataFrame:
        return df[KEYS + [c for c in df.columns if c not in KEYS]].sort_values(KEYS + extra, ignore_index=True)

    replicas = order(pd.DataFrame(rows), []) if rows else pd.DataFrame(columns=KEYS + MEANING)
    predictions = _stacked(preds, "example") if preds else pd.DataFrame(columns=KEYS)
    if preds:
        predictions["correct"] = predictions["prediction"] == predictions["label"]
    history = _stacked(hists, "epoch") if hists else pd.DataFrame(columns=KEYS)
    return Runs(replicas, predictions, history, problems)


def _stacked(parts: list[tuple[dict, pd.DataFrame]], within: str) -> pd.DataFrame:
    """The replicas' frames one under the other, sorted by KEYS then `within`, the KEYS as the first columns.

    Sorted by putting the replicas in key order and each frame in `within` order (unique per replica), then
    concatenating: the order a sort of all the rows would give, without sorting millions of rows, and the key
    columns are built once by repetition instead of being added to every replica's frame (together ~10 s of
    a chapter's load on the default store, measured)."""
    parts = sorted(parts, key=lambda part: tuple(part[0][k] for k in KEYS))
    frames = [f if f[within].is_monotonic_increasing else f.sort_values(within, kind="stable") for _, f in parts]
    stacked = pd.concat(frames, ignore_index=True)
    lengths = [len(f) for f in frames]
    for i, k in enumerate(KEYS):
        stacked.insert(i, k, pd.Series([key[k] for key, _ in parts]).repeat(lengths).reset_index(drop=True))
    return stacked


def resource_columns(manifest: dict) -> dict:
    """A replica's row entries for what its training used and ran: process ("own": a process of its
    own, "shared"), peak_device_bytes, peak_host_bytes, kernels_kind, kernels_hash, kernel_names
    (sorted); None for what its manifest does not record (written before them, or not measured)."""
    resources, kernels = manifest.get("resources") or {}, manifest.get("kernels") or {}
    return {
        "process": resources.get("process"),
        "peak_device_bytes": resources.get("peak_device_bytes"),
        "peak_host_bytes": resources.get("peak_host_bytes"),
        "kernels_kind": kernels.get("kind"),
        "kernels_hash": kernels.get("hash"),
        "kernel_names": kernels.get("names"),
    }


def prediction_matrix(
    predictions: pd.DataFrame, column: str = "prediction"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(R, N) matrix of one cell's predictions (rows by ascending replica id, columns by example
    id), with labels (N,) and groups (N,)."""
    wide = predictions.pivot(index="replica", columns="example", values=column)
    first = predictions[predictions["replica"] == wide.index[0]].sort_values("example")
    return wide.to_numpy(), first["label"].to_numpy(), first["group"].to_numpy()


# ----------------------------------------------------------------------------- cells
class DeterminismViolation(RuntimeError):
    """Replicas of a setting that promises bit-identical results differ."""


def check_identical(replicas: pd.DataFrame) -> list[str]:
    """Problems with a cell whose setting promises identical replicas (empty when fine)."""
    problems = []
    for column in ("weights_hash", "predictions_hash"):
        values = replicas[column].unique()
        if len(values) > 1:
            groups = replicas.groupby(column)["replica"].apply(list).tolist()
            problems.append(f"{column} differs between replicas: groups {groups}")
    return problems


def remove_replica(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- multi-label replicas
def pack_bits(values) -> np.ndarray:
    """(N, K) 0/1 (or bool) -> (N,) int64 bit masks: bit k (value 2**k) holds column k. K <= 63 (int64's
    non-negative range): CelebA's 40 attributes fit. Inverse of `unpack_bits`."""
    v = np.asarray(values)
    if v.ndim != 2 or v.shape[1] > 63 or (v.size and not np.isin(v, (0, 1)).all()):
        raise ValueError(f"pack_bits needs an (N, K) array of 0/1 with K <= 63, got shape {v.shape}")
    weights = np.left_shift(np.int64(1), np.arange(v.shape[1], dtype=np.int64))
    return (v.astype(np.int64) * weights).sum(axis=1, dtype=np.int64)


def unpack_bits(values, k: int) -> np.ndarray:
    """(N,) int64 bit masks of a multi-label replica (`pack_bits`) -> (N, k) bool, column j = bit j, the
    manifest's labels.names[j]. Raises ValueError for a value outside 0 .. 2**k - 1."""
    v = np.asarray(values, dtype=np.int64)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= 63:
        raise ValueError(f"unpack_bits: k must be an integer in 1 .. 63, got {k!r}")
    if v.ndim != 1 or (v.size and (v.min() < 0 or v.max() >= 1 << int(k))):
        raise ValueError(f"unpack_bits needs (N,) masks in 0 .. 2**{k} - 1, got shape {v.shape}")
    return ((v[:, None] >> np.arange(int(k), dtype=np.int64)) & 1).astype(bool)


def label_encoding(result) -> dict:
    """The manifest's "labels" of a multi-label replica: how predictions.parquet holds its (N, K) labels
    and predictions (bit masks, `unpack_bits`) and the name of each bit, in order (the dataset's outputs:
    CelebA's attributes as list_attr_celeba.txt orders them; output_k where the result names none)."""
    k = result.labels.shape[1]
    names = getattr(result, "label_names", None) or [f"output_{j}" for j in range(k)]
    if len(names) != k:
        raise ValueError(f"the result names {len(names)} outputs for its {k} label columns: {names[:3]}...")
    return {"encoding": "bitmask", "names": list(names)}


def multilabel_names(manifest: dict) -> list[str] | None:
    """The output names of a multi-label replica's bit masks, in bit order; None for a replica whose
    predictions are class indices (every manifest without "labels")."""
    labels = manifest.get("labels")
    if labels is None:
        return None
    if not isinstance(labels, dict) or labels.get("encoding") != "bitmask" or not labels.get("names"):
        raise ValueError(f"manifest labels must be {{'encoding': 'bitmask', 'names': [...]}}, got {labels!r}")
    return list(labels["names"])
