"""The run store: atomic, checksummed replica directories and tidy loading."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from nnrandomness import store
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
    assert sorted(p.name for p in d.iterdir()) == ["history.parquet", "manifest.json", "predictions.parquet", "weights.safetensors"]
    m = json.loads((d / "manifest.json").read_text())
    assert m["spec"]["replica"] == 1 and m["hardware"] == "cpu-1t" and m["seeds"]["init"] == 1
    assert m["files"]["weights.safetensors"] == store.sha256_file(d / "weights.safetensors")
    assert m["setting"] == {"name": "ALGO", "varied": ["aug", "dropout", "init", "order"], "deterministic": True,
                            "perturb_ulp": False}


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

    monkeypatch.setattr(store, "save_file", crash)  # the write dies half-way
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
