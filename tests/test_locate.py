"""Tests for nnrandomness.locate: the op trace, the lockstep replicas and the divergence report.

Step indexing (locate's module docstring): step 0 is the initial state, step s >= 1 the s-th
optimizer step. Each locate run here trains on digits for one epoch or less.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from nnrandomness import cli, data, locate, models, store, train

SPEC = train.ReplicaSpec(dataset="digits", model="smallcnn", epochs=1, threads=1)


@pytest.fixture(scope="module")
def digits():
    return data.load_digits()


@pytest.fixture(scope="module")
def small_digits(digits):
    """512 training examples: 4 steps per epoch at batch 128 (the toy model's steps are costly)."""
    return dataclasses.replace(digits, x_train=digits.x_train[:512], y_train=digits.y_train[:512])


# ----------------------------------------------------------------------------- a toy with index_put_
class ScatterSum(nn.Module):
    """Adds a million copies of its input's entries into random bins with index_put_(accumulate=True).

    On the CPU at 2 threads the order in which index_put_ accumulates varies from run to run
    (measured: NOTES-ENVIRONMENT.md), so the bits of the sums do too; under the deterministic flag
    torch uses an ordered accumulation. Interleaved target bins matter: when each thread's share
    of the indices hits bins of its own the result is stable. The copies come from `repeat`, whose
    backward is a plain sum, so index_put_ is the only non-deterministic op, forward or backward.
    """

    def __init__(self, elements: int = 1_000_000):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        # Fixed random bins (not state: persistent=False keeps them out of the state_dict).
        self.register_buffer("bins", torch.randint(0, 2**62, (elements,), generator=g), persistent=False)

    def forward(self, h):
        flat = h.flatten()
        n, copies = flat.numel(), len(self.bins)
        values = flat.repeat(-(-copies // n))[:copies]
        sums = flat.new_zeros(n).index_put_((self.bins % n,), values, accumulate=True)
        return (sums * (n / copies)).view_as(h)


class IndexPutToy(nn.Module):
    def __init__(self, num_classes, in_channels, generator):
        super().__init__()
        self.linear = nn.Linear(in_channels * 8 * 8, num_classes)
        self.scatter = ScatterSum()
        models.glorot_init(self, generator)

    def forward(self, x):
        return self.scatter(self.linear(x.flatten(1)))


def index_put_toy(num_classes, in_channels, generator):
    return IndexPutToy(num_classes, in_channels, generator)


# ----------------------------------------------------------------------------- pieces
def test_bits_equal_is_bitwise():
    assert locate.bits_equal(torch.tensor([float("nan"), 1.0]), torch.tensor([float("nan"), 1.0]))
    assert not locate.bits_equal(torch.tensor([0.0]), torch.tensor([-0.0]))  # equal values, other bits
    assert not locate.bits_equal(torch.tensor([1.0]), torch.tensor([1.0], dtype=torch.float64))
    assert not locate.bits_equal(torch.tensor([1.0]), torch.nextafter(torch.tensor([1.0]), torch.tensor([2.0])))
    assert locate.bits_equal(None, None) and not locate.bits_equal(torch.zeros(1), None)


def test_compare_traces_finds_first_and_counts():
    rec = lambda op, digest: (op, "forward", "m", digest, "(1,)")  # noqa: E731
    a = [rec("aten.mm.default", "x"), rec("aten.add.Tensor", "y"), rec("aten.relu.default", "z")]
    assert locate.compare_traces(a, list(a)) == (None, 0)
    b = [a[0], rec("aten.add.Tensor", "Y"), rec("aten.relu.default", "Z")]
    assert locate.compare_traces(a, b) == (1, 2)
    assert locate.compare_traces(a, a[:2]) == (2, 1)  # B's trace ended early
    c = [a[0], rec("aten.sub.Tensor", "y"), a[2]]  # same bits, other op: structure differs
    assert locate.compare_traces(a, c) == (1, 1)


def test_trace_names_modules_and_phases():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    where = locate._Where(model)
    x = torch.randn(5, 4)
    try:
        with locate._OpTrace(where) as trace:
            where.set_phase("forward")
            out = model(x)
            where.set_phase("backward")
            out.sum().backward()
    finally:
        where.remove()
    seen = {(phase, module, op) for op, phase, module, _, _ in trace.records}
    assert ("forward", "0", "aten.addmm.default") in seen and ("forward", "2", "aten.addmm.default") in seen
    assert ("forward", "1", "aten.relu.default") in seen
    # Backward: the last layer's weight gradient is an mm attributed to module "2", ReLU's to "1".
    assert ("backward", "2", "aten.mm.default") in seen
    assert ("backward", "1", "aten.threshold_backward.default") in seen
    # Hooks are gone afterwards: a second forward adds no records and leaves no module stack.
    model(x)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_bad_factor_and_threads_are_clear_errors(digits):
    with pytest.raises(ValueError, match="unknown factor 'bogus'; valid factors: none, impl, threads, ulp"):
        locate.locate_divergence(SPEC, "bogus", dataset=digits)
    with pytest.raises(ValueError, match="threads_b different from spec.threads"):
        locate.locate_divergence(SPEC, "threads", threads_b=1, dataset=digits)


def test_cli_errors_are_clear(capsys):
    assert cli.main(["locate", "--factor", "threads", "--threads", "2", "--threads-b", "2"]) == 2
    assert "threads_b different from spec.threads, both are 2" in capsys.readouterr().err
    assert cli.main(["locate", "--factor", "ulp", "--model", "nosuchnet"]) == 2
    assert "unknown model 'nosuchnet'; valid models: smallcnn" in capsys.readouterr().err


# ----------------------------------------------------------------------------- lockstep runs
def test_equal_replicas_report_no_divergence(digits):
    report = locate.locate_divergence(SPEC, "none", dataset=digits)
    assert not report.diverged and report.first_step is None and report.first_op is None
    assert report.steps_run == report.steps_per_epoch == 12  # 1,438 examples at batch 128
    assert (report.history["weight_l2"] == 0).all() and (report.history["n_disagree"] == 0).all()
    assert list(report.history["epoch"]) == [0, 1] and int(report.flips["n_flipped"].sum()) == 0
    assert "no divergence" in report.summary()


# Every part of the step that draws or changes state on: augmentation, dropout, weight decay, and
# a learning-rate milestone between the two epochs.
RECIPE = dataclasses.replace(SPEC, epochs=2, augment=True, dropout=0.2, weight_decay=1e-3, lr_milestones=(1,))


@pytest.mark.parametrize("factor", ["none", "ulp"])
def test_lockstep_replicas_end_bit_identical_to_the_trainer(digits, factor):
    # locate drives train_replica's own step: each replica ends with the trainer's bits, traced
    # ("none" traces every step: nothing diverges) or not ("ulp" stops tracing at step 0).
    report = locate.locate_divergence(RECIPE, factor, dataset=digits)
    assert report.diverged == (factor == "ulp") and report.steps_run == 24
    for weights, label in zip(report.weights, "AB"):
        setting = report.replicas[label]["setting"]
        trained = train.train_replica(dataclasses.replace(RECIPE, setting=setting), digits)
        assert list(trained.history["lr"]) == pytest.approx([RECIPE.lr, RECIPE.lr * RECIPE.lr_decay])
        assert trained.perturbation == report.replicas[label]["perturbation"]
        assert store.weights_hash(weights) == store.weights_hash(trained.weights), f"replica {label} ({setting})"


@pytest.mark.parametrize("batch", [0, 1])  # batch 0 also starts the epoch (lr, order)
def test_traced_step_runs_its_parts_in_order(small_digits, batch):
    # train.train_step tells locate each part of the one step before it runs: every traced op,
    # from the batch's slice of the order on, belongs to one of the five parts, in this order.
    spec = dataclasses.replace(RECIPE, setting="CONTROL")
    replica = locate._Replica("A", spec, small_digits, None)
    if batch:
        locate._step(replica, small_digits, 0, 0, trace=False)
    records = locate._step(replica, small_digits, 0, batch, trace=True)
    phases = [phase for i, (_, phase, *_) in enumerate(records) if i == 0 or phase != records[i - 1][1]]
    assert phases == ["data", "forward", "loss", "backward", "optimizer"]
    assert records[0][0] == ("aten.randperm.generator" if batch == 0 else "aten.slice.Tensor")


def test_thread_counts_diverge_at_the_first_step(digits):
    report = locate.locate_divergence(SPEC, "threads", threads_b=2, dataset=digits)
    assert report.replicas["A"]["threads"] == 1 and report.replicas["B"]["threads"] == 2
    # Step 1 is the first optimizer step: the forward pass agrees, a reduction over the batch does not.
    assert report.first_step == 1 and report.first_weight_step == 1
    assert report.first_step_parts["weights"] and report.first_step_parts["gradients"]
    assert report.first_op is not None and report.first_op["op_a"] == report.first_op["op_b"]
    assert report.first_op["op_a"].startswith("aten.") and report.first_op["phase"] in ("forward", "loss", "backward")
    assert 0 < report.differing_ops <= report.traced_ops
    frame = report.to_frame()
    assert list(frame["first_step"].unique()) == [1] and frame["threads_b"].iloc[0] == 2
    assert frame["weight_l2"].iloc[-1] > 0


def test_ulp_poke_diverges_at_step_0(digits):
    report = locate.locate_divergence(SPEC, "ulp", dataset=digits)
    poked = report.replicas["B"]["perturbation"]
    assert report.replicas["A"]["perturbation"] is None and poked is not None
    assert report.first_step == 0 and report.first_weight_step == 0 and report.first_op is None
    assert report.initial_difference == [poked["parameter"]]
    assert 0 < report.history["weight_l2"].iloc[0] < 1e-6  # one ULP of one weight
    assert "diverged at step 0: the initial states differ in " + poked["parameter"] in report.summary()


def test_index_put_nondeterminism_is_caught_at_the_op(small_digits):
    spec = dataclasses.replace(SPEC, threads=2)
    # The accumulation order is genuinely random run to run: one run of 4 steps almost always
    # shows it (each index_put_ differs with high probability at 2 threads); allow 3 runs.
    for _ in range(3):
        report = locate.locate_divergence(spec, "impl", dataset=small_digits, model_factory=index_put_toy)
        if report.diverged:
            break
    assert report.diverged, "index_put_(accumulate=True) gave identical bits in 3 runs of 4 steps"
    assert report.model == "index_put_toy" and report.first_step >= 1
    op = report.first_op
    assert (op["op_a"], op["module"], op["phase"]) == ("aten.index_put_.default", "scatter", "forward")
    assert "aten.index_put_.default in scatter (forward)" in report.summary()


def test_index_put_is_not_caught_under_deterministic_algorithms(small_digits):
    spec = dataclasses.replace(SPEC, threads=2)
    report = locate.locate_divergence(spec, "none", dataset=small_digits, model_factory=index_put_toy)
    assert report.replicas["A"]["backend"]["effective"]["deterministic_algorithms"]
    assert not report.diverged and report.first_op is None


def test_cli_reports_flipped_subgroups(tmp_path, capsys):
    out = tmp_path / "locate"
    code = cli.main(
        [
            "locate",
            "--factor",
            "threads",
            "--dataset",
            "digits_groups",
            "--epochs",
            "1",
            "--threads",
            "1",
            "--threads-b",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "diverged at step 1" in printed
    for name in ("report.json", "history.parquet", "flips.parquet", "subgroups.parquet"):
        assert (out / name).exists(), name
    import pandas as pd

    subgroups = pd.read_parquet(out / "subgroups.parquet")
    assert set(subgroups.columns) >= {"label", "group", "n_test", "n_flipped"}
    assert subgroups["n_test"].sum() == 359
