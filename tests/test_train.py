"""Training one replica: validation, the determinism contract on the CPU, kill-and-resume."""

import dataclasses
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from nnrandomness import metrics, models, store
from nnrandomness.data import load_dataset
from nnrandomness.train import ReplicaSpec, load_checkpoint, lr_at, train_replica, validate_spec

TINY = ReplicaSpec(dataset="digits", model="smallcnn", epochs=3, lr=2e-3, threads=1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def train(digits, **changes):
    return train_replica(dataclasses.replace(TINY, **changes), digits)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "changes, error, message",
    [
        (dict(setting="ALGO_IMPL"), ValueError, r"unknown setting 'ALGO_IMPL'; valid settings: ALGO\+IMPL"),
        (dict(model="smallcnn2"), ValueError, r"unknown model 'smallcnn2'; valid models: smallcnn"),
        (dict(dataset="mnist"), ValueError, r"unknown dataset 'mnist'; valid datasets: digits"),
        (dict(epochs=0), ValueError, r"epochs must be an integer >= 1, got 0"),
        (dict(epochs=2.5), ValueError, r"epochs must be an integer >= 1, got 2.5"),
        (dict(batch_size=-1), ValueError, r"batch_size must be an integer >= 1, got -1"),
        (dict(replica=-1), ValueError, r"replica must be an integer >= 0"),
        (dict(lr=0), ValueError, r"lr must be a positive number, got 0"),
        (dict(precision="fp16"), ValueError, r"unknown precision 'fp16'; valid precisions: fp32, tf32, bf16"),
        (dict(dropout=1.0), ValueError, r"dropout must be in \[0, 1\), got 1.0"),
        (dict(device="tpu"), ValueError, r"unknown device 'tpu'; valid devices: cpu, cuda, mps"),
        (dict(setting="DROPOUT"), ValueError, r"varies only dropout, but the recipe has dropout=0"),
        (dict(setting="AUG"), ValueError, r"varies only augmentation, but the recipe has augment=False"),
        (dict(dataset="cifar10", data_root="/nonexistent"), FileNotFoundError, r"cifar10.*/nonexistent"),
        (dict(snapshot_epochs=(2, 4)), ValueError, r"snapshot_epochs must lie in 1 \.\. epochs \(3\), got \[4\]"),
        (dict(snapshot_epochs=(2, 2)), ValueError, r"snapshot_epochs must not repeat an epoch, got \[2, 2\]"),
        (dict(snapshot_epochs=(0,)), ValueError, r"snapshot_epochs must be a list of positive epoch numbers"),
        (dict(dataset="mnist1d"), ValueError, r"'smallcnn' cannot take 1D signals.*valid models for them: cnn1d"),
        (dict(model="cnn1d"), ValueError, r"'cnn1d' cannot take 2D images.*valid models for them: smallcnn"),
    ],
)
def test_bad_spec_is_refused_with_the_value_and_choices(changes, error, message):
    with pytest.raises(error, match=message):
        validate_spec(dataclasses.replace(TINY, **changes))


def test_lr_schedule_is_the_papers_step_schedule():
    spec = ReplicaSpec()  # 4e-4 for epochs 0-49, 4e-5 for 50-99, 4e-6 after
    assert [lr_at(spec, e) for e in (0, 49, 50, 99, 100, 199)] == pytest.approx([4e-4, 4e-4, 4e-5, 4e-5, 4e-6, 4e-6])


def test_result_shapes_and_history(digits):
    r = train(digits)
    n = len(digits.y_test)
    assert r.predictions.shape == (n,) and r.probabilities.shape == (n, 10)
    np.testing.assert_allclose(r.probabilities.sum(1), 1, rtol=1e-5)
    assert list(r.history["epoch"]) == [1, 2, 3]
    assert {"train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds", "lr"} <= set(r.history)
    assert r.history["train_loss"].is_monotonic_decreasing  # a working loop learns
    assert r.history["test_accuracy"].iloc[-1] == pytest.approx((r.predictions == r.labels).mean())
    assert r.backend["effective"]["deterministic_algorithms"] is True  # CONTROL
    assert r.environment["torch"] == torch.__version__


# ----------------------------------------------------------------------------- determinism contract
def test_algo_replicas_differ(digits):
    a, b = train(digits, setting="ALGO", replica=0), train(digits, setting="ALGO", replica=1)
    assert store.weights_hash(a.weights) != store.weights_hash(b.weights)
    assert metrics.churn(np.stack([a.predictions, b.predictions])) > 0


def test_impl_replicas_at_fixed_threads_are_identical_on_cpu(digits):
    # A finding, not a requirement: these CPU kernels are deterministic at a fixed thread count,
    # so IMPL (tooling noise only) gives no variation on the CPU.
    a, b = train(digits, setting="IMPL", replica=0), train(digits, setting="IMPL", replica=1)
    assert store.weights_hash(a.weights) == store.weights_hash(b.weights)


def test_thread_count_alone_changes_the_bits(digits):
    a, b = train(digits, threads=1), train(digits, threads=2)
    assert store.weights_hash(a.weights) != store.weights_hash(b.weights)


@pytest.mark.parametrize("setting", ["INIT", "ORDER", "AUG", "DROPOUT", "ULP"])
def test_single_source_presets_vary_their_source(digits, setting):
    a = train(digits, setting=setting, replica=0, augment=True, dropout=0.2)
    b = train(digits, setting=setting, replica=1, augment=True, dropout=0.2)
    assert store.weights_hash(a.weights) != store.weights_hash(b.weights)
    if setting == "ULP":
        assert a.perturbation["parameter"] and a.perturbation != b.perturbation


# ----------------------------------------------------------------------------- kill and resume
KILLED = """
import sys
from nnrandomness.train import ReplicaSpec, train_replica
spec = ReplicaSpec(epochs=40, lr=2e-3, threads=1, setting=sys.argv[2])
train_replica(spec, checkpoint_dir=sys.argv[1])
print("finished")
"""


@pytest.mark.parametrize("setting", ["CONTROL", "ALGO"])
def test_killed_replica_resumes_bit_identical(tmp_path, setting):
    spec = ReplicaSpec(epochs=40, lr=2e-3, threads=1, setting=setting)
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(tmp_path), setting], stdout=subprocess.PIPE)
    ckpt = tmp_path / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt.exists():
            epoch = load_checkpoint(ckpt)["epoch"]
            if epoch >= 3:
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    assert b"finished" not in out, "the replica finished before it could be killed"
    resumed = train_replica(spec, checkpoint_dir=tmp_path)
    assert 3 <= resumed.resumed_from_epoch < 40
    whole = train_replica(spec)
    assert store.weights_hash(resumed.weights) == store.weights_hash(whole.weights)
    assert np.array_equal(resumed.probabilities, whole.probabilities)
    assert resumed.history.drop(columns="seconds").equals(whole.history.drop(columns="seconds"))


def test_checkpoint_of_another_spec_is_refused(tmp_path, digits):
    train_replica(TINY, digits, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="belongs to another spec"):
        train_replica(dataclasses.replace(TINY, lr=1e-3), digits, checkpoint_dir=tmp_path)


def test_bf16_autocast_runs_on_cpu(digits):
    r = train(digits, precision="bf16", epochs=1)
    assert r.backend["requested"]["autocast_bf16"] and np.isfinite(r.history["train_loss"]).all()


@pytest.mark.requires_gpu
def test_control_on_cuda_is_bit_identical_and_algo_impl_records_benchmark():
    spec = dataclasses.replace(TINY, device="cuda")
    a, b = train_replica(spec), train_replica(spec)
    assert store.weights_hash(a.weights) == store.weights_hash(b.weights)
    c = train_replica(dataclasses.replace(spec, setting="ALGO+IMPL"))
    assert c.backend["effective"]["cudnn_benchmark"] is True
    assert c.backend["effective"]["deterministic_algorithms"] is False


# ----------------------------------------------------------------------------- MNIST-1D, snapshots, store size
SMALL_MNIST1D = {"train_pool": 100, "test_size": 100, "extra_size": 100, "extra_sets": 2}
SIGNAL = ReplicaSpec(dataset="mnist1d", model="cnn1d", epochs=3, batch_size=16, lr=0.01, lr_milestones=(), threads=1)


@pytest.fixture(scope="module")
def mnist1d(tmp_path_factory):
    """A small MNIST-1D (80 train, 100 test, 2 extra test sets of 100) cached in a temporary data root."""
    return load_dataset("mnist1d", tmp_path_factory.mktemp("data"), **SMALL_MNIST1D)


def test_snapshots_record_predictions_without_changing_the_bits(mnist1d):
    plain = train_replica(dataclasses.replace(SIGNAL, setting="ALGO", dropout=0.2), mnist1d)
    snap = train_replica(dataclasses.replace(SIGNAL, setting="ALGO", dropout=0.2, snapshot_epochs=(1, 3)), mnist1d)
    assert store.weights_hash(snap.weights) == store.weights_hash(plain.weights)
    assert np.array_equal(snap.predictions, plain.predictions) and plain.snapshots == {}
    assert sorted(snap.snapshots) == [1, 3] and np.array_equal(snap.snapshots[3], snap.predictions)
    first = snap.history.set_index("epoch").loc[1, "test_accuracy"]
    assert (snap.snapshots[1] == snap.labels).mean() == pytest.approx(first)


def test_snapshots_survive_a_resume(tmp_path, mnist1d):
    spec = dataclasses.replace(SIGNAL, snapshot_epochs=(1, 2))
    whole = train_replica(spec, mnist1d, checkpoint_dir=tmp_path)  # leaves its checkpoint after epoch 3
    resumed = train_replica(spec, mnist1d, checkpoint_dir=tmp_path)
    assert resumed.resumed_from_epoch == 3 and sorted(resumed.snapshots) == [1, 2]
    assert all(np.array_equal(resumed.snapshots[e], whole.snapshots[e]) for e in (1, 2))


def test_extra_test_sets_and_keep_probabilities(mnist1d, digits):
    r = train_replica(dataclasses.replace(SIGNAL, keep_probabilities=False), mnist1d)
    assert r.probabilities is None and r.predictions.shape == (100,)
    extra = r.extra_tests
    assert extra["seeds"] == [101, 102] and extra["n"] == [100, 100]
    assert all(0 <= a <= 1 for a in extra["accuracy"]) and r.timings["extra_eval_seconds"] > 0
    # the accuracy of each set is the model's: evaluated again by hand on the first set
    model = models.build_model("cnn1d", 10, 1, generator=torch.Generator())
    model.load_state_dict(r.weights)
    _, x, y = next(iter(mnist1d.extra_tests))
    with torch.no_grad():
        assert (model.eval()(x).argmax(1) == y).float().mean().item() == pytest.approx(extra["accuracy"][0])
    assert train(digits, epochs=1).extra_tests is None


def test_testing_less_often_and_no_extra_sets_keep_the_bits(mnist1d):
    full = train_replica(dataclasses.replace(SIGNAL, setting="ALGO", snapshot_epochs=(1,)), mnist1d)
    lean = dataclasses.replace(SIGNAL, setting="ALGO", snapshot_epochs=(1,), test_every_epoch=False, extra_tests=False)
    r = train_replica(lean, mnist1d)
    assert store.weights_hash(r.weights) == store.weights_hash(full.weights)
    assert np.array_equal(r.snapshots[1], full.snapshots[1]) and r.extra_tests is None
    tested = r.history.set_index("epoch")["test_accuracy"]
    # epoch 1 is a snapshot and epoch 3 the last: tested; epoch 2 is not
    assert tested.isna().tolist() == [False, True, False]
    assert tested[3] == full.history.set_index("epoch")["test_accuracy"][3]


@pytest.mark.parametrize("model", ["cnn1d", "cnn1d_bn", "mlp1d"])
@pytest.mark.parametrize("setting", ["INIT", "ORDER", "AUG", "DROPOUT", "ULP"])
def test_every_single_source_varies_the_signal_models(mnist1d, model, setting):
    # each source alone changes the weights between replicas 0 and 1 (AUG: the time shift; DROPOUT: SeededDropout)
    spec = dataclasses.replace(SIGNAL, model=model, setting=setting, epochs=1, dropout=0.2, augment=True)
    a, b = (train_replica(dataclasses.replace(spec, replica=k), mnist1d) for k in (0, 1))
    assert store.weights_hash(a.weights) != store.weights_hash(b.weights)
    assert (a.perturbation is not None) == (setting == "ULP")


def test_one_mnist1d_replica_without_probabilities_is_small(tmp_path):
    """The real sizes: one cnn1d replica (4,000 train, 10,000 test examples) written with keep_probabilities
    false and two snapshots takes under 60 KB on disk. Without the extra test sets (their first generation
    takes ~80 s): the 20 sets' seeds, sizes and accuracies add ~1.2 KB to the manifest, left as margin."""
    dataset = load_dataset("mnist1d", extra_sets=0)
    spec = dataclasses.replace(SIGNAL, epochs=2, batch_size=128, keep_probabilities=False, snapshot_epochs=(1, 2))
    path = store.write_replica(tmp_path, "cpu-1t", train_replica(spec, dataset))
    size = sum(f.stat().st_size for f in path.iterdir())
    assert size + 2_000 < 60_000, {f.name: f.stat().st_size for f in path.iterdir()}
