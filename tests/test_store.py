"""The run store: atomic, checksummed replica directories and tidy loading."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from nnrandomness import analysis, store
from nnrandomness.train import ReplicaResult, ReplicaSpec

SPEC = ReplicaSpec(dataset="digits_groups", model="smallcnn", setting="ALGO", epochs=2)


def fake_result(replica: int, preds) -> ReplicaResult:
    """A hand-made result (the store is under test here, not training)."""
    preds = np.asarray(preds)
    n = len(preds)
    probs = np.full((n, 3), 0.1, dtype=np.float32)
    probs[np.arange(n), preds] = 0.8
    return ReplicaResult(
        spec=dataclasses.replace(SPEC, replica=replica),
        seeds={"init": 1, "order": 2, "aug": 3, "dropout": 4, "perturb": 5},
        history=pd.DataFrame({"epoch": [1, 2], "test_accuracy": [0.5, 0.75], "seconds": [0.1, 0.1]}),
        predictions=preds,
        probabilities=probs,
        labels=np.array([0, 1, 2, 1]),
        groups=np.array([0, 0, 1, 1]),
        weights={"w": torch.arange(6, dtype=torch.float32).view(2, 3) + replica, "b": torch.zeros(2)},
        backend={"requested": {}, "effective": {}},
        environment={"torch": torch.__version__, "git_commit": None},
        timings={"train_seconds": 0.2},
    )


@pytest.fixture
def root(tmp_path):
    for k, preds in enumerate([[0, 1, 2, 1], [0, 2, 2, 0]]):
        store.write_replica(tmp_path, "cpu-1t", fake_result(k, preds))
    return tmp_path


def test_layout_and_manifest(root):
    d = root / "cpu-1t/digits_groups/smallcnn/ALGO/replica-1"
    assert sorted(p.name for p in d.iterdir()) == [
        "history.parquet",
        "manifest.json",
        "predictions.parquet",
        "weights.safetensors",
    ]
    m = json.loads((d / "manifest.json").read_text())
    assert m["spec"]["replica"] == 1 and m["hardware"] == "cpu-1t" and m["seeds"]["init"] == 1
    assert m["files"]["weights.safetensors"] == store.sha256_file(d / "weights.safetensors")
    assert m["setting"] == {
        "name": "ALGO",
        "varied": ["aug", "dropout", "init", "order"],
        "deterministic": True,
        "perturb_ulp": False,
    }


def test_load_runs_is_tidy(root):
    runs = store.load_runs(root)
    assert runs.problems == []
    assert list(runs.replicas["replica"]) == [0, 1]
    p = runs.predictions
    assert len(p) == 8 and list(p.columns[:5]) == store.KEYS
    assert p[p.replica == 1]["prediction"].tolist() == [0, 2, 2, 0]
    assert p[p.replica == 1]["correct"].tolist() == [True, False, True, False]
    assert p["group"].tolist()[:4] == [0, 0, 1, 1]
    assert runs.cells()["replicas"].tolist() == [2]
    assert len(runs.history) == 4
    preds, labels, groups = store.prediction_matrix(p)
    assert preds.tolist() == [[0, 1, 2, 1], [0, 2, 2, 0]] and labels.tolist() == [0, 1, 2, 1]
    w = store.load_weights(runs.replicas["path"][1])
    assert torch.equal(w["w"], torch.arange(6, dtype=torch.float32).view(2, 3) + 1)
    with_probs = store.load_runs(root, probabilities=True).predictions
    assert with_probs["prob_2"].tolist()[:4] == pytest.approx([0.1, 0.1, 0.8, 0.1])


def test_filters(root):
    assert len(store.load_runs(root, setting="CONTROL").replicas) == 0
    assert len(store.load_runs(root, setting="ALGO", hardware="cpu-1t").replicas) == 2
    with pytest.raises(ValueError, match=r"unknown filter\(s\) \['replica_index'\]; valid filters: hardware"):
        store.load_runs(root, replica_index=1)


def test_missing_manifest_is_reported_not_read(root):
    d = root / "cpu-1t/digits_groups/smallcnn/ALGO/replica-1"
    (d / "manifest.json").unlink()
    with pytest.warns(UserWarning, match="skipped 1 incomplete or damaged"):
        runs = store.load_runs(root)
    assert list(runs.replicas["replica"]) == [0]
    assert runs.problems == [(str(d), "no manifest (incomplete or interrupted replica)")]
    assert not store.is_complete(d)


def test_damaged_file_fails_its_checksum(root):
    d = root / "cpu-1t/digits_groups/smallcnn/ALGO/replica-0"
    data = bytearray((d / "weights.safetensors").read_bytes())
    data[-1] ^= 1
    (d / "weights.safetensors").write_bytes(bytes(data))
    with pytest.warns(UserWarning):
        runs = store.load_runs(root)
    assert runs.problems == [(str(d), "weights.safetensors fails its SHA-256 checksum")]
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable manifest"):
        store.read_manifest(d)


def test_overwrite_is_incomplete_until_its_manifest_lands(tmp_path, monkeypatch):
    store.write_replica(tmp_path, "cpu-1t", fake_result(0, [0, 1, 2, 1]))
    d = tmp_path / "cpu-1t/digits_groups/smallcnn/ALGO/replica-0"

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store, "save_weights", crash)  # the write dies half-way
    with pytest.raises(OSError):
        store.write_replica(tmp_path, "cpu-1t", fake_result(0, [1, 1, 1, 1]))
    assert not store.is_complete(d)


def test_hashes_are_content_hashes():
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.0])}
    b = {"b": torch.tensor([0.0]), "w": torch.tensor([1.0, 2.0])}
    assert store.weights_hash(a) == store.weights_hash(b)
    b["w"] = torch.tensor([1.0, float(np.nextafter(np.float32(2.0), np.float32(3.0)))])
    assert store.weights_hash(a) != store.weights_hash(b)
    # -0.0 == 0.0 numerically but not bitwise: the hash must see it.
    assert store.weights_hash({"b": torch.tensor([0.0])}) != store.weights_hash({"b": torch.tensor([-0.0])})


def test_zero_dim_buffers_are_hashed():
    # BatchNorm's num_batches_tracked is a 0-dim tensor.
    a = {"bn.num_batches_tracked": torch.tensor(3), "w": torch.ones(2)}
    b = {"bn.num_batches_tracked": torch.tensor(4), "w": torch.ones(2)}
    assert store.weights_hash(a) != store.weights_hash(b)
    assert store.weights_hash(a) == store.weights_hash({k: v.clone() for k, v in a.items()})


# ----------------------------------------------------------------------------- the view
def _record(path, **setting):
    """Rewrite what a replica's manifest records about its setting (the manifest is not checksummed)."""
    m = json.loads((path / store.MANIFEST).read_text())
    if setting:
        m["setting"].update(setting)
    else:
        del m["setting"]
    (path / store.MANIFEST).write_text(json.dumps(m))


def test_cells_carry_matrix_and_recorded_meaning(root):
    runs = store.load_runs(root)
    (cell,) = list(runs.iter_cells())
    assert cell.key == {"hardware": "cpu-1t", "dataset": "digits_groups", "model": "smallcnn", "setting": "ALGO"}
    assert cell.preds.tolist() == [[0, 1, 2, 1], [0, 2, 2, 0]] and cell.preds.dtype == np.int64
    assert cell.labels.tolist() == [0, 1, 2, 1] and cell.groups.tolist() == [0, 0, 1, 1] and cell.has_groups
    assert cell.replica_ids == [0, 1] and cell.examples.tolist() == [0, 1, 2, 3] and len(cell.predictions) == 8
    assert cell.meaning == {
        "varied": frozenset({"init", "order", "aug", "dropout"}),
        "deterministic": True,
        "perturb_ulp": False,
    }
    assert next(runs.iter_cells()) is cell  # built once per view


def test_meaning_is_read_as_recorded_not_from_todays_settings(root):
    # A store whose ALGO replicas were written when ALGO meant "nothing varies": read as recorded.
    for k in (0, 1):
        _record(root / f"cpu-1t/digits_groups/smallcnn/ALGO/replica-{k}", varied=[], perturb_ulp=False)
    runs = store.load_runs(root)
    assert runs.replicas["varied"].tolist() == [(), ()]
    assert next(runs.iter_cells()).meaning["varied"] == frozenset()
    # today's ALGO varies every source; the analysis reads the recorded meaning: these replicas must be identical
    assert analysis.identity(runs)["expects_identical"].tolist() == [True]
    assert analysis.topline(runs, weights=False)["expects_identical"].tolist() == [True]
    _record(root / "cpu-1t/digits_groups/smallcnn/ALGO/replica-1", deterministic=False)
    with pytest.raises(ValueError, match="setting ALGO record 2 different meanings"):
        list(store.load_runs(root).iter_cells())


def test_manifest_without_meaning_is_a_problem(root):
    _record(root / "cpu-1t/digits_groups/smallcnn/ALGO/replica-0")
    with pytest.warns(UserWarning, match="skipped 1"):
        runs = store.load_runs(root)
    assert runs.replicas["replica"].tolist() == [1] and "missing key 'setting'" in runs.problems[0][1]


def test_select(root):
    store.write_replica(root, "cpu-2t", fake_result(0, [1, 1, 1, 1]))
    runs = store.load_runs(root)
    one = runs.select(hardware="cpu-2t")
    assert one.replicas["hardware"].tolist() == ["cpu-2t"] and len(one.predictions) == 4 and len(one.history) == 2
    assert [c.key["hardware"] for c in one.iter_cells()] == ["cpu-2t"]
    assert len(runs.select(hardware=["cpu-1t", "cpu-2t"], replica=0).replicas) == 2  # a list matches any value
    assert runs.select(setting="CONTROL").replicas.empty and list(runs.select(setting="CONTROL").iter_cells()) == []
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['seed'\]; valid keys: hardware"):
        runs.select(seed=1)


# ----------------------------------------------------------------------------- MNIST-1D: compact replicas
def compact_result(replica: int, preds) -> ReplicaResult:
    """A result written without probabilities, with two snapshots and two extra test sets."""
    r = fake_result(replica, preds)
    return dataclasses.replace(
        r,
        spec=dataclasses.replace(r.spec, dataset="mnist1d_groups", model="cnn1d", keep_probabilities=False),
        probabilities=None,
        snapshots={1: np.array([0, 0, 0, 0]), 2: np.array([0, 1, 2, 2])},
        extra_tests={"seeds": [101, 102], "n": [100, 100], "accuracy": [0.5 + replica / 10, 0.75]},
    )


def test_keep_probabilities_false_round_trip(tmp_path):
    for k in (0, 1):
        store.write_replica(tmp_path, "cpu-1t", compact_result(k, [0, 1, 2, 1]))
    store.write_replica(tmp_path, "cpu-1t", fake_result(0, [0, 1, 2, 1]))  # digits_groups keeps its probabilities
    d = tmp_path / "cpu-1t/mnist1d_groups/cnn1d/ALGO/replica-0"
    m = store.read_manifest(d)
    assert m["has_probabilities"] is False and m["snapshot_epochs"] == [1, 2]
    # predictions only: the hash covers the predictions alone
    assert m["predictions_hash"] == store.predictions_hash(np.array([0, 1, 2, 1]), None)
    assert m["predictions_hash"] != store.predictions_hash(np.array([0, 1, 2, 1]), np.zeros((4, 3), np.float32))
    raw = pd.read_parquet(d / "predictions.parquet")
    assert not [c for c in raw.columns if c.startswith("prob_")]
    assert raw["prediction_epoch_2"].dtype == np.int8 and raw["prediction_epoch_2"].tolist() == [0, 1, 2, 2]

    runs = store.load_runs(tmp_path)
    reps = runs.replicas.set_index(["dataset", "replica"])
    assert reps.loc[("mnist1d_groups", 1), "extra_accuracy"] == [0.6, 0.75]
    assert reps.loc[("mnist1d_groups", 0), "extra_n"] == [100, 100]
    assert reps.loc[("digits_groups", 0), "extra_accuracy"] == [] and reps.loc[("digits_groups", 0), "extra_n"] == []
    assert reps["has_probabilities"].tolist() == [True, False, False]
    assert "prediction_epoch_1" not in runs.predictions.columns  # snapshots only when asked for
    with pytest.raises(ValueError, match=r"2 replica\(s\) hold no probabilities.*keep_probabilities false"):
        store.load_runs(tmp_path, probabilities=True)
    assert len(store.load_runs(tmp_path, probabilities=True, dataset="digits_groups").predictions) == 4

    snaps = store.load_runs(tmp_path, snapshots=True, dataset="mnist1d_groups")
    (cell,) = snaps.iter_cells()
    preds, _, _ = store.prediction_matrix(cell.predictions, store.snapshot_column(2))
    assert preds.tolist() == [[0, 1, 2, 2], [0, 1, 2, 2]] and cell.preds.tolist() == [[0, 1, 2, 1]] * 2


def test_malformed_extra_tests_are_a_problem(tmp_path):
    path = store.write_replica(tmp_path, "cpu-1t", compact_result(0, [0, 1, 2, 1]))
    m = json.loads((path / store.MANIFEST).read_text())
    for bad, message in (
        ({"seeds": [1], "n": [1, 2], "accuracy": [0.5]}, "one length"),
        ({"seeds": [1], "n": ["x"], "accuracy": [0.5]}, "must hold numbers"),
        (5, "null or an object"),
    ):
        (path / store.MANIFEST).write_text(json.dumps({**m, "extra_tests": bad}))
        with pytest.raises(ValueError, match=message):
            store.read_manifest(path)
    (path / store.MANIFEST).write_text(json.dumps({**m, "snapshot_epochs": ["1"]}))
    with pytest.raises(ValueError, match="snapshot_epochs must be a list of integers"):
        store.read_manifest(path)
