"""One cell: run_cell trains the replicas of a setting into the store, skips and resumes them, and
holds CONTROL to its promise of bit-identical replicas."""

import ast
import dataclasses
import inspect
import json

import pytest

from nnrandomness import cell, metrics, store, train
from nnrandomness.cell import run_cell
from nnrandomness.data import load_dataset
from nnrandomness.train import ReplicaSpec, train_replica

TINY = ReplicaSpec(dataset="digits", model="smallcnn", epochs=3, lr=2e-3, threads=1)


def test_bad_cell_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="unknown setting"):
        run_cell(dataclasses.replace(TINY, setting="NOPE"), 2, tmp_path, "cpu-1t")
    with pytest.raises(ValueError, match="replicas must be"):
        run_cell(TINY, 0, tmp_path, "cpu-1t")
    assert list(tmp_path.iterdir()) == []


def test_control_replicas_are_bit_identical(tmp_path):
    rows = run_cell(TINY, 2, tmp_path, "cpu-1t", progress=False)
    assert rows["weights_hash"].nunique() == 1 and rows["predictions_hash"].nunique() == 1
    runs = store.load_runs(tmp_path)
    preds, _, _ = store.prediction_matrix(runs.predictions)
    assert metrics.churn(preds) == 0.0
    weights = [{k: v.numpy() for k, v in store.load_weights(p).items()} for p in runs.replicas["path"]]
    assert metrics.mean_pairwise_l2(weights) == 0.0


def test_control_cell_with_differing_replicas_fails_loudly(tmp_path):
    run_cell(TINY, [0], tmp_path, "cpu-1t", progress=False)
    # A host mix-up: replica 1 of the same cell trained at another thread count.
    run_cell(dataclasses.replace(TINY, threads=2), [1], tmp_path, "cpu-1t", progress=False)
    message = "CONTROL replicas of cpu-1t/digits/smallcnn are not bit-identical"
    with pytest.raises(store.DeterminismViolation, match=message):
        run_cell(TINY, 2, tmp_path, "cpu-1t", progress=False)


def test_complete_replicas_are_skipped(tmp_path):
    run_cell(TINY, 1, tmp_path, "cpu-1t", progress=False)
    manifest = tmp_path / "cpu-1t/digits/smallcnn/CONTROL/replica-0/manifest.json"
    stamp = manifest.stat().st_mtime_ns
    run_cell(TINY, 1, tmp_path, "cpu-1t", progress=False)
    assert manifest.stat().st_mtime_ns == stamp


def test_interrupted_replica_resumes_from_its_checkpoint(tmp_path):
    # A replica killed after its last epoch but before the store wrote it: its checkpoint is in
    # the replica's directory, without a manifest. run_cell must resume it, not start over.
    path = store.replica_dir(tmp_path, "cpu-1t", TINY.dataset, TINY.model, TINY.setting, 0)
    whole = train_replica(TINY, checkpoint_dir=path)
    assert (path / "checkpoint.pt").exists() and not store.is_complete(path)
    row = run_cell(TINY, 1, tmp_path, "cpu-1t", progress=False).iloc[0]
    manifest = json.loads((path / store.MANIFEST).read_text())
    assert manifest["resumed_from_epoch"] == TINY.epochs
    assert row["weights_hash"] == store.weights_hash(whole.weights)
    assert not (path / "checkpoint.pt").exists()  # the store removes it once the replica is written


def _imported_modules(module) -> set[str]:
    """Names of this package's modules that `module` imports (TYPE_CHECKING blocks included)."""
    names = set()
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names |= {node.module} if node.module else {a.name for a in node.names}
    return names


def test_train_knows_nothing_of_the_store_and_the_store_nothing_of_train():
    assert "store" not in _imported_modules(train)
    assert not _imported_modules(store) & {"train", "cell"}
    assert {"train", "store"} <= _imported_modules(cell)


def test_a_mnist1d_cell_records_its_extra_test_sets(tmp_path):
    # a small MNIST-1D (80 train, 100 test, 2 extra sets of 100) passed in, its cache in tmp_path
    small = load_dataset("mnist1d", tmp_path / "data", train_pool=100, test_size=100, extra_size=100, extra_sets=2)
    spec = ReplicaSpec(dataset="mnist1d", model="cnn1d", epochs=2, batch_size=16, lr=0.01, keep_probabilities=False)
    rows = run_cell(spec, 2, tmp_path / "runs", "cpu-1t", progress=False, dataset=small)
    assert rows["weights_hash"].nunique() == 1  # CONTROL, on signals too
    assert rows["extra_n"].tolist() == [[100, 100]] * 2 and len(rows["extra_accuracy"].iloc[0]) == 2
    assert rows["has_probabilities"].tolist() == [False, False]
    with pytest.raises(ValueError, match="the dataset passed is 'mnist1d', the spec's is 'digits'"):
        run_cell(TINY, 1, tmp_path / "runs", "cpu-1t", dataset=small)
