"""Tests for nnrandomness.metrics: hand-computed small cases plus properties."""

import itertools
import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nnrandomness import metrics as m

# The project treats warnings as errors; enforce it here regardless of config.
pytestmark = pytest.mark.filterwarnings("error")

# Shared hand example: R=3 replicas, N=5 examples, classes {0,1,2} (+ absent 3).
LABELS = np.array([0, 1, 2, 1, 0])
PREDS = np.array(
    [
        [0, 1, 2, 1, 1],  # correct: 1 1 1 1 0 -> acc 4/5
        [0, 2, 0, 0, 2],  # correct: 1 0 0 0 0 -> acc 1/5
        [1, 1, 2, 1, 1],  # correct: 0 1 1 1 0 -> acc 3/5
    ]
)


def naive_churn_matrix(preds):
    r = preds.shape[0]
    out = np.zeros((r, r))
    for i in range(r):
        for j in range(r):
            out[i, j] = np.mean(preds[i] != preds[j])
    return out


# ---------------------------------------------------------------- accuracy


def test_accuracy_hand():
    np.testing.assert_allclose(m.accuracy(PREDS, LABELS), [0.8, 0.2, 0.6])


def test_accuracy_summary_hand():
    s = m.accuracy_summary(PREDS, LABELS)
    # mean = 1.6/3 = 8/15; deviations 4/15, -5/15, 1/15 -> sum sq 42/225;
    # ddof=1 variance 21/225 = 7/75.
    assert s["mean"] == pytest.approx(8 / 15)
    assert s["std"] == pytest.approx(math.sqrt(7 / 75))
    assert s["min"] == pytest.approx(0.2)
    assert s["max"] == pytest.approx(0.8)
    assert s["n_replicas"] == 3


def test_accuracy_summary_single_replica_std_nan():
    s = m.accuracy_summary(PREDS[:1], LABELS)
    assert s["mean"] == pytest.approx(0.8)
    assert math.isnan(s["std"])


# ---------------------------------------------------------------- churn


def test_pairwise_churn_hand():
    # r0-r1 differ on ex 1,2,3,4 -> 4/5; r0-r2 differ on ex 0 -> 1/5;
    # r1-r2 differ everywhere -> 1.
    expected = np.array([[0.0, 0.8, 0.2], [0.8, 0.0, 1.0], [0.2, 1.0, 0.0]])
    np.testing.assert_allclose(m.pairwise_churn(PREDS), expected)


def test_churn_hand():
    # Class counts per example: every example has counts {2, 1}, so
    # R^2 - sum n_c^2 = 9 - 5 = 4 -> 2 disagreeing pairs each; 10 / (5*3) = 2/3.
    # Same as mean of upper triangle (0.8 + 0.2 + 1.0) / 3.
    assert m.churn(PREDS) == pytest.approx(2 / 3)


def test_churn_zero_exactly_when_all_match():
    row = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    assert m.churn(np.tile(row, (7, 1))) == 0.0
    assert np.all(m.pairwise_churn(np.tile(row, (4, 1))) == 0.0)
    changed = np.tile(row, (7, 1))
    changed[3, 5] = 0
    assert m.churn(changed) > 0.0


def test_churn_matches_pairwise_on_random_data():
    for seed in range(200):
        rng = np.random.default_rng(seed)
        r = int(rng.integers(2, 9))
        n = int(rng.integers(1, 40))
        c = int(rng.integers(1, 6))
        preds = rng.integers(0, c, size=(r, n))
        pw = m.pairwise_churn(preds)
        assert np.array_equal(pw, pw.T)
        assert np.all(np.diag(pw) == 0.0)
        np.testing.assert_allclose(pw, naive_churn_matrix(preds), rtol=0, atol=1e-15)
        upper = pw[np.triu_indices(r, k=1)].mean()
        assert m.churn(preds) == pytest.approx(upper, rel=1e-12, abs=1e-15)


def test_churn_decomposition_hand():
    # k = number of replicas correct per example: 2,2,2,2,0.
    # one_correct pairs = k(R-k): 2,2,2,2,0 -> 8; differing pairs: 2 each -> 10;
    # both_wrong = 10 - 8 = 2 (ex 4: preds 1,2,1 with label 0). Pairs*N = 15.
    d = m.churn_decomposition(PREDS, LABELS)
    assert d["churn"] == pytest.approx(10 / 15)
    assert d["one_correct"] == pytest.approx(8 / 15)
    assert d["both_wrong"] == pytest.approx(2 / 15)


def test_churn_decomposition_sums_on_random_data():
    for seed in range(100):
        rng = np.random.default_rng(1000 + seed)
        r, n, c = int(rng.integers(2, 7)), int(rng.integers(1, 30)), int(rng.integers(1, 5))
        preds = rng.integers(0, c, size=(r, n))
        labels = rng.integers(0, c, size=n)
        d = m.churn_decomposition(preds, labels)
        assert d["one_correct"] + d["both_wrong"] == pytest.approx(d["churn"], abs=1e-14)
        assert d["churn"] == pytest.approx(m.churn(preds), abs=1e-14)
        # Cross-check one_correct by a naive loop over pairs.
        ok = preds == labels
        naive = np.mean([np.mean(ok[i] != ok[j]) for i, j in itertools.combinations(range(r), 2)])
        assert d["one_correct"] == pytest.approx(naive, abs=1e-14)


def test_churn_vs_reference_hand():
    # Reference r0 (correct on ex 0-3, wrong on ex 4 with pred 1):
    #   r1: c->w on ex 1,2,3 (0.6); w->c none; w->other w on ex 4 (pred 2): 0.2.
    #   r2: c->w on ex 0 (0.2); ex 4 pred 1 equals reference -> no churn.
    d = m.churn_vs_reference(PREDS, LABELS, reference=0)
    np.testing.assert_array_equal(d["replicas"], [1, 2])
    np.testing.assert_allclose(d["correct_to_wrong"], [0.6, 0.2])
    np.testing.assert_allclose(d["wrong_to_correct"], [0.0, 0.0])
    np.testing.assert_allclose(d["wrong_to_other_wrong"], [0.2, 0.0])
    np.testing.assert_allclose(d["churn"], [0.8, 0.2])
    assert d["mean_correct_to_wrong"] == pytest.approx(0.4)
    assert d["mean_wrong_to_other_wrong"] == pytest.approx(0.1)
    assert d["mean_churn"] == pytest.approx(0.5)
    # Reference r1 (correct only on ex 0): direction flips.
    #   r0: w->c on ex 1,2,3 (0.6), w->other w ex 4 (0.2).
    #   r2: c->w ex 0 (0.2), w->c ex 1,2,3 (0.6), w->other w ex 4 (0.2).
    d1 = m.churn_vs_reference(PREDS, LABELS, reference=1)
    np.testing.assert_array_equal(d1["replicas"], [0, 2])
    np.testing.assert_allclose(d1["correct_to_wrong"], [0.0, 0.2])
    np.testing.assert_allclose(d1["wrong_to_correct"], [0.6, 0.6])
    np.testing.assert_allclose(d1["wrong_to_other_wrong"], [0.2, 0.2])
    np.testing.assert_allclose(d1["churn"], [0.8, 1.0])


def test_churn_vs_reference_parts_sum_to_pairwise_row():
    rng = np.random.default_rng(7)
    preds = rng.integers(0, 4, size=(6, 50))
    labels = rng.integers(0, 4, size=50)
    d = m.churn_vs_reference(preds, labels, reference=2)
    total = d["correct_to_wrong"] + d["wrong_to_correct"] + d["wrong_to_other_wrong"]
    np.testing.assert_allclose(total, d["churn"], atol=1e-15)
    np.testing.assert_allclose(d["churn"], m.pairwise_churn(preds)[2, [0, 1, 3, 4, 5]])


# ---------------------------------------------------------------- weights


def _hand_weights():
    # Learnable params: a (2,), b (1,1); BN buffers differ only in replica 2.
    w0 = {
        "a": np.array([0.0, 0.0]),
        "b": np.array([[0.0]]),
        "bn.running_mean": np.array([0.0]),
        "bn.num_batches_tracked": np.array(5),
    }
    w1 = {
        "a": np.array([3.0, 0.0]),
        "b": np.array([[4.0]]),
        "bn.running_mean": np.array([0.0]),
        "bn.num_batches_tracked": np.array(5),
    }
    w2 = {
        "a": np.array([0.0, 0.0]),
        "b": np.array([[0.0]]),
        "bn.running_mean": np.array([2.0]),
        "bn.num_batches_tracked": np.array(5),
    }
    return [w0, w1, w2]


def test_is_buffer_name():
    assert m.is_buffer_name("layer1.0.bn1.running_mean")
    assert m.is_buffer_name("bn.running_var")
    assert m.is_buffer_name("bn.num_batches_tracked")
    assert not m.is_buffer_name("bn.weight")
    assert not m.is_buffer_name("conv.bias")


def test_pairwise_l2_hand_and_buffers():
    w = _hand_weights()
    # Default excludes buffers: d01 = |(3,0,4)| = 5, d02 = 0, d12 = 5.
    expected = np.array([[0.0, 5.0, 0.0], [5.0, 0.0, 5.0], [0.0, 5.0, 0.0]])
    np.testing.assert_allclose(m.pairwise_l2(w), expected, atol=1e-12)
    # Including buffers: d02 = |2| = 2, d12 = sqrt(9 + 16 + 4) = sqrt(29).
    d_all = m.pairwise_l2(w, include=lambda name: True)
    expected_all = np.array([[0.0, 5.0, 2.0], [5.0, 0.0, math.sqrt(29)], [2.0, math.sqrt(29), 0.0]])
    np.testing.assert_allclose(d_all, expected_all, atol=1e-12)
    # Mean over pairs: (5 + 0 + 5) / 3.
    assert m.mean_pairwise_l2(w) == pytest.approx(10 / 3)
    assert m.mean_pairwise_l2(w, include=lambda n: True) == pytest.approx((5 + 2 + math.sqrt(29)) / 3)
    # Custom selection: only "b" -> distances 4, 0, 4.
    d_b = m.pairwise_l2(w, include=lambda name: name == "b")
    np.testing.assert_allclose(d_b[0], [0.0, 4.0, 0.0], atol=1e-12)


def test_pairwise_l2_exact_zero_for_bitwise_equal():
    rng = np.random.default_rng(0)
    # Large offset makes Gram-matrix cancellation error visible if unhandled.
    base = {"w": 1000.0 + rng.normal(size=(100, 50)), "b": rng.normal(size=7)}
    other = {"w": base["w"] + 1e-3 * rng.normal(size=(100, 50)), "b": base["b"].copy()}
    copy = {k: v.copy() for k, v in base.items()}
    d = m.pairwise_l2([base, other, copy, other])
    assert d[0, 2] == 0.0 and d[2, 0] == 0.0
    assert d[1, 3] == 0.0 and d[3, 1] == 0.0
    assert np.all(np.diag(d) == 0.0)
    assert d[0, 1] > 0.0
    assert np.array_equal(d, d.T)


def test_pairwise_l2_matches_naive_loop_on_random_data():
    for seed in range(20):
        rng = np.random.default_rng(seed)
        r = int(rng.integers(2, 7))
        offset = 100.0 * rng.normal(size=(5, 3))
        # Replicas close to each other relative to their norm (the usual case).
        scale = [1.0, 1e-3, 1e-6][seed % 3]
        weights = [
            {
                "conv.weight": offset + scale * rng.normal(size=(5, 3)),
                "fc.bias": rng.normal(size=4).astype(np.float32),
                "bn.running_var": rng.normal(size=2),
            }
            for _ in range(r)
        ]
        d = m.pairwise_l2(weights)
        assert np.array_equal(d, d.T)
        flat = [
            np.concatenate([np.asarray(w[k], dtype=np.float64).ravel() for k in ("conv.weight", "fc.bias")])
            for w in weights
        ]
        naive = np.array([[np.linalg.norm(a - b) for b in flat] for a in flat])
        np.testing.assert_allclose(d, naive, rtol=1e-6, atol=1e-12)


def test_pairwise_l2_single_replica():
    assert np.array_equal(m.pairwise_l2([{"a": np.ones(3)}]), np.zeros((1, 1)))


def test_pairwise_l2_bad_inputs():
    w = _hand_weights()
    missing = [w[0], {k: v for k, v in w[1].items() if k != "b"}, w[2]]
    with pytest.raises(ValueError, match="'b'"):
        m.pairwise_l2(missing)
    extra = [w[0], dict(w[1], extra=np.zeros(1)), w[2]]
    with pytest.raises(ValueError, match="'extra'"):
        m.pairwise_l2(extra)
    bad_shape = [w[0], dict(w[1], a=np.zeros(3)), w[2]]
    with pytest.raises(ValueError, match=re.escape("weights[1]['a']")):
        m.pairwise_l2(bad_shape)
    nonfinite = [w[0], dict(w[1], a=np.array([np.nan, 0.0])), w[2]]
    with pytest.raises(ValueError, match="non-finite"):
        m.pairwise_l2(nonfinite)
    with pytest.raises(ValueError, match="no parameters"):
        m.pairwise_l2(w, include=lambda name: False)
    with pytest.raises(ValueError, match="R=1"):
        m.mean_pairwise_l2(w[:1])
    with pytest.raises(ValueError, match="R=0"):
        m.pairwise_l2([])


# ---------------------------------------------------------------- per class


def test_per_class_accuracy_hand():
    # class 0: ex 0,4; class 1: ex 1,3; class 2: ex 2; class 3 absent -> nan.
    expected = np.array(
        [
            [0.5, 1.0, 1.0, np.nan],  # r0: ex4 wrong
            [0.5, 0.0, 0.0, np.nan],  # r1: only ex0 right
            [0.0, 1.0, 1.0, np.nan],  # r2: ex0, ex4 wrong
        ]
    )
    np.testing.assert_allclose(m.per_class_accuracy(PREDS, LABELS, 4), expected)


def test_per_class_summary_hand():
    df = m.per_class_summary(PREDS, LABELS, 4)
    assert list(df.columns) == ["class", "n_examples", "mean", "std"]
    assert df["class"].tolist() == [0, 1, 2, 3]
    assert df["n_examples"].tolist() == [2, 2, 1, 0]
    # class 0 values .5,.5,0: mean 1/3, var (1/36+1/36+4/36)/2 = 1/12.
    # class 1 and 2 values 1,0,1: mean 2/3, var (1/9+4/9+1/9)/2 = 1/3.
    np.testing.assert_allclose(df["mean"][:3], [1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(df["std"][:3], np.sqrt([1 / 12, 1 / 3, 1 / 3]))
    assert math.isnan(df["mean"][3]) and math.isnan(df["std"][3])


def test_per_class_bad_inputs():
    with pytest.raises(ValueError, match="class 5 >= num_classes=3"):
        m.per_class_accuracy(np.zeros((2, 3), dtype=int), np.array([0, 5, 1]), 3)
    with pytest.raises(ValueError, match="preds contain class 3"):
        m.per_class_accuracy(np.full((2, 3), 3), np.array([0, 1, 1]), 3)


# ---------------------------------------------------------------- subgroups

# Hand confusion: binary target, groups a (4), b (4), c (2, no positives).
SG_GROUPS = np.array(list("aaaabbbbcc"))
SG_LABELS = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0])
SG_PREDS = np.array(
    [
        # a: tp=1 fn=2 tn=1 fp=0 | b: tp=1 fp=1 tn=2 fn=0 | c: fp=1 tn=1
        [1, 0, 0, 0, 1, 1, 0, 0, 0, 1],
        # a: tp=3 fp=1          | b: fn=1 tn=3            | c: tn=2
        [1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
    ]
)


def test_subgroup_rates_hand_confusion():
    df = m.subgroup_rates(SG_PREDS, SG_LABELS, SG_GROUPS)
    assert list(df.columns) == ["replica", "group", "class", "n", "tp", "fp", "tn", "fn", "accuracy", "fpr", "fnr"]
    assert df["replica"].tolist() == [0, 0, 0, 1, 1, 1]
    assert df["group"].tolist() == ["a", "b", "c", "a", "b", "c"]
    assert df["class"].tolist() == [1] * 6
    assert df["n"].tolist() == [4, 4, 2, 4, 4, 2]
    assert df["tp"].tolist() == [1, 1, 0, 3, 0, 0]
    assert df["fp"].tolist() == [0, 1, 1, 1, 0, 0]
    assert df["tn"].tolist() == [1, 2, 1, 0, 3, 2]
    assert df["fn"].tolist() == [2, 0, 0, 0, 1, 0]
    np.testing.assert_allclose(df["accuracy"], [0.5, 0.75, 0.5, 0.75, 0.75, 1.0])
    # fpr = fp/(fp+tn); fnr = fn/(fn+tp); group c has no positives -> nan fnr.
    np.testing.assert_allclose(df["fpr"], [0.0, 1 / 3, 0.5, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(df["fnr"], [2 / 3, 0.0, np.nan, 0.0, 1.0, np.nan])


def test_fnr_differs_from_paper_bug():
    # Replica 0, group a: tp=1 fn=2 fp=0 tn=1.
    # Correct FNR = FN/(FN+TP) = 2/3; the released code's FN/(FP+TN) = 2/1 = 2.
    row = m.subgroup_rates(SG_PREDS, SG_LABELS, SG_GROUPS).iloc[0]
    ours = row["fnr"]
    buggy = row["fn"] / (row["fp"] + row["tn"])
    assert ours == pytest.approx(2 / 3)
    assert buggy == pytest.approx(2.0)
    assert ours != pytest.approx(buggy)


def test_subgroup_rates_positive_zero():
    # With class 0 as positive, the roles of fp/fn and tp/tn swap.
    pos1 = m.subgroup_rates(SG_PREDS, SG_LABELS, SG_GROUPS, positive=1)
    pos0 = m.subgroup_rates(SG_PREDS, SG_LABELS, SG_GROUPS, positive=0)
    assert pos0["class"].tolist() == [0] * 6
    np.testing.assert_array_equal(pos0["tp"], pos1["tn"])
    np.testing.assert_array_equal(pos0["fp"], pos1["fn"])
    np.testing.assert_allclose(pos0["accuracy"], pos1["accuracy"])


def test_subgroup_rates_one_vs_rest_hand():
    df = m.subgroup_rates(PREDS, LABELS, np.zeros(5, dtype=int), positive=None)
    assert len(df) == 9  # 3 replicas x 3 classes x 1 group
    # r0, class 0: tp ex0, fn ex4 (pred 1), no fp, tn 3 -> fpr 0, fnr 1/2.
    r = df[(df.replica == 0) & (df["class"] == 0)].iloc[0]
    assert (r.tp, r.fp, r.tn, r.fn) == (1, 0, 3, 1)
    assert r.fnr == pytest.approx(0.5) and r.fpr == 0.0
    assert r.accuracy == pytest.approx(0.8)
    # r1, class 2: label 2 only at ex2 (pred 0) -> fn 1; pred 2 at ex1, ex4 -> fp 2;
    # tn = 5 - 0 - 1 - 2 = 2 -> fpr 2/4, fnr 1.
    r = df[(df.replica == 1) & (df["class"] == 2)].iloc[0]
    assert (r.tp, r.fp, r.tn, r.fn) == (0, 2, 2, 1)
    assert r.fpr == pytest.approx(0.5) and r.fnr == pytest.approx(1.0)
    assert r.accuracy == pytest.approx(0.2)


def test_subgroup_one_vs_rest_agrees_with_binary():
    ovr = m.subgroup_rates(SG_PREDS, SG_LABELS, SG_GROUPS, positive=None)
    binary = m.subgroup_rates(SG_PREDS, SG_LABELS, SG_GROUPS, positive=1)
    sub = ovr[ovr["class"] == 1].reset_index(drop=True)
    pd.testing.assert_frame_equal(sub, binary, check_dtype=False)


def test_subgroup_summary_hand():
    s = m.subgroup_summary(m.subgroup_rates(SG_PREDS, SG_LABELS, SG_GROUPS))
    assert s["group"].tolist() == ["a", "b", "c"]
    assert s["n"].tolist() == [4, 4, 2]
    assert s["n_replicas"].tolist() == [2, 2, 2]
    a = s.iloc[0]
    # a: accuracy .5,.75; fpr 0,1; fnr 2/3,0. Std of two values = |diff|/sqrt(2).
    assert a.accuracy_mean == pytest.approx(0.625)
    assert a.accuracy_std == pytest.approx(0.25 / math.sqrt(2))
    assert a.fpr_mean == pytest.approx(0.5)
    assert a.fpr_std == pytest.approx(1 / math.sqrt(2))
    assert a.fnr_mean == pytest.approx(1 / 3)
    assert a.fnr_std == pytest.approx((2 / 3) / math.sqrt(2))
    c = s.iloc[2]
    assert math.isnan(c.fnr_mean) and math.isnan(c.fnr_std)
    assert c.fpr_mean == pytest.approx(0.25)


def test_subgroup_bad_inputs():
    with pytest.raises(ValueError, match="contain class 2"):
        m.subgroup_rates(PREDS, LABELS, np.zeros(5, dtype=int), positive=1)
    with pytest.raises(ValueError, match="positive must be"):
        m.subgroup_rates(SG_PREDS, SG_LABELS, SG_GROUPS, positive=2)
    with pytest.raises(ValueError, match=re.escape("(9,)")):
        m.subgroup_rates(SG_PREDS, SG_LABELS, SG_GROUPS[:9])
    with pytest.raises(ValueError, match="'fnr'"):
        m.subgroup_summary(
            pd.DataFrame({"replica": [0], "class": [1], "group": ["a"], "n": [1], "accuracy": [1.0], "fpr": [0.0]})
        )


# ---------------------------------------------------------------- per example


def test_per_example_instability_hand():
    df = m.per_example_instability(PREDS, LABELS)
    assert list(df.columns) == ["example", "frac_correct", "n_distinct", "modal_agreement"]
    assert df["example"].tolist() == [0, 1, 2, 3, 4]
    # Every column of PREDS has two classes with counts 2 and 1.
    np.testing.assert_allclose(df["frac_correct"], [2 / 3, 2 / 3, 2 / 3, 2 / 3, 0.0])
    assert df["n_distinct"].tolist() == [2, 2, 2, 2, 2]
    np.testing.assert_allclose(df["modal_agreement"], [2 / 3] * 5)
    # Columns: all different / all equal (and correct) / 3-of-4 agree.
    preds = np.array([[0, 4, 1], [1, 4, 1], [2, 4, 1], [2, 4, 0]])
    df = m.per_example_instability(preds, np.array([2, 4, 1]))
    assert df["n_distinct"].tolist() == [3, 1, 2]
    np.testing.assert_allclose(df["modal_agreement"], [0.5, 1.0, 0.75])
    np.testing.assert_allclose(df["frac_correct"], [0.5, 1.0, 0.75])


# ---------------------------------------------------------------- Jordan


def test_distribution_variance_hand():
    d = m.distribution_variance(PREDS, LABELS)
    # observed: var(.8,.2,.6; ddof=1) = 7/75.
    # p_n = 2/3 x4, 0 -> sum p(1-p) = 4 * 2/9 = 8/9; * R/(R-1) = 3/2 -> 4/3;
    # / N^2 = 25 -> predicted 4/75; raw = 3/75 = 0.04; * N/(N-1) = 5/4 -> 1/20.
    assert d["observed_var"] == pytest.approx(7 / 75)
    assert d["predicted_var"] == pytest.approx(4 / 75)
    assert d["distribution_var_raw"] == pytest.approx(3 / 75)
    assert d["distribution_var"] == pytest.approx(1 / 20) and not d["negative"]
    assert d["n_replicas"] == 3 and d["n_examples"] == 5


def test_distribution_variance_reports_a_negative_estimate():
    # Two replicas, two examples, each wrong on a different one:
    # acc 0.5, 0.5 -> observed 0. p = .5,.5 -> sum p(1-p) = .5; * 2/1 = 1; / 4.
    # Estimate N/(N-1) * (0 - 1/4) = -1/2: negative, reported as such (clipping biases upward).
    preds = np.array([[0, 0], [1, 1]])
    d = m.distribution_variance(preds, np.array([0, 1]))
    assert d["observed_var"] == 0.0
    assert d["predicted_var"] == pytest.approx(0.25)
    assert d["distribution_var_raw"] == pytest.approx(-0.25)
    assert d["distribution_var"] == pytest.approx(-0.5) and d["negative"]


def test_distribution_variance_is_unbiased_where_the_clipped_one_was_not():
    # Independent examples: the distribution variance is 0. Averaged over many simulated
    # studies the corrected estimate is about 0, while the old clipped one averaged well above.
    rng = np.random.default_rng(11)
    p = rng.uniform(0.6, 1.0, size=30)
    est = [m.distribution_variance(np.where(rng.random((8, 30)) < p, 0, 1), np.zeros(30, int)) for _ in range(400)]
    values = np.array([d["distribution_var"] for d in est])
    se = values.std() / np.sqrt(values.size)
    assert abs(values.mean()) < 3 * se and np.maximum(values, 0).mean() > 5 * se


def test_distribution_variance_independent_errors():
    # Independent per-example Bernoulli errors: observed ~= predicted.
    rng = np.random.default_rng(3)
    p = rng.uniform(0.5, 1.0, size=400)
    correct = rng.random((300, 400)) < p
    labels = np.zeros(400, dtype=int)
    d = m.distribution_variance(np.where(correct, 0, 1), labels)
    assert d["observed_var"] == pytest.approx(d["predicted_var"], rel=0.25)


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_hand_two_values():
    # Resample means of [0, 1] take values 0, .5, 1 with prob 1/4, 1/2, 1/4:
    # the 2.5% and 97.5% percentiles of 1000 draws are 0 and 1.
    assert m.bootstrap_ci(np.array([0.0, 1.0]), np.mean) == (0.0, 1.0)


def test_bootstrap_deterministic_and_covers():
    values = np.random.default_rng(11).normal(5.0, 1.0, size=200)
    ci1 = m.bootstrap_ci(values, np.mean, n_boot=500, seed=3)
    ci2 = m.bootstrap_ci(values, np.mean, n_boot=500, seed=3)
    ci3 = m.bootstrap_ci(values, np.mean, n_boot=500, seed=4)
    assert ci1 == ci2
    assert ci1 != ci3
    assert ci1[0] < 5.0 < ci1[1]
    assert ci1[0] < values.mean() < ci1[1]
    # Constant values give a degenerate interval.
    assert m.bootstrap_ci(np.full(10, 0.7), np.mean) == pytest.approx((0.7, 0.7))


def test_bootstrap_on_preds_matrix():
    rng = np.random.default_rng(5)
    preds = rng.integers(0, 3, size=(6, 40))
    low, high = m.bootstrap_ci(preds, m.churn, n_boot=200, level=0.9, seed=1)
    assert 0.0 <= low <= high <= 1.0
    assert (low, high) == m.bootstrap_ci(preds, m.churn, n_boot=200, level=0.9, seed=1)


def test_bootstrap_bad_inputs():
    with pytest.raises(ValueError, match="level must be in"):
        m.bootstrap_ci(np.arange(5.0), np.mean, level=1.5)
    with pytest.raises(ValueError, match="n_boot"):
        m.bootstrap_ci(np.arange(5.0), np.mean, n_boot=0)
    with pytest.raises(ValueError, match="R=1"):
        m.bootstrap_ci(np.arange(1.0), np.mean)
    with pytest.raises(ValueError, match="scalar"):
        m.bootstrap_ci(np.ones((4, 3)), lambda x: x.mean(axis=0))


# ---------------------------------------------------------------- spread test


def test_spread_test_hand():
    # Brown-Forsythe: a=[1,2,3] median 2 -> Z=[1,0,1]; b=[0,0,6] median 0 -> Z=[0,0,6].
    # Zbar_a=2/3, Zbar_b=2, Zbar=4/3. Between: 3*(4/9)+3*(4/9) = 8/3.
    # Within: (1/9+4/9+1/9) + (4+4+16) = 74/3. W = (6-2)/(2-1) * (8/3)/(74/3) = 16/37.
    res = m.spread_test([1, 2, 3], [0, 0, 6])
    assert res["statistic"] == pytest.approx(16 / 37)
    assert res["pvalue"] == pytest.approx(stats.f.sf(16 / 37, 1, 4))
    assert res["test"] == "Brown-Forsythe"
    assert (res["n_a"], res["n_b"]) == (3, 3)
    assert m.spread_test([1, 2, 3], [0, 0, 6], center="mean")["test"] == "Levene"


def test_spread_test_power_and_size():
    rng = np.random.default_rng(2024)
    narrow = rng.normal(0.9, 0.001, size=30)
    wide = rng.normal(0.9, 0.01, size=30)
    same = rng.normal(0.9, 0.001, size=30)
    assert m.spread_test(narrow, wide)["pvalue"] < 0.01
    assert m.spread_test(narrow, same)["pvalue"] > 0.05


def test_spread_test_degenerate_no_warning():
    res = m.spread_test([1.0, 1.0, 1.0], [2.0, 2.0])
    assert math.isnan(res["statistic"])


def test_spread_test_bad_inputs():
    with pytest.raises(ValueError, match="at least 2 values, got 1"):
        m.spread_test([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="'trimmed'"):
        m.spread_test([1.0, 2.0], [1.0, 2.0], center="trimmed")


# ---------------------------------------------------------------- validation


def test_bad_prediction_inputs():
    with pytest.raises(ValueError, match="R=1"):
        m.churn(PREDS[:1])
    with pytest.raises(ValueError, match="R=1"):
        m.churn_decomposition(PREDS[:1], LABELS)
    with pytest.raises(ValueError, match="R=1"):
        m.distribution_variance(PREDS[:1], LABELS)
    with pytest.raises(ValueError, match="length 4 but preds has N=5"):
        m.accuracy(PREDS, LABELS[:4])
    with pytest.raises(ValueError, match=re.escape("shape (5,)")):
        m.churn(PREDS[0])
    with pytest.raises(ValueError, match="negative class index -1"):
        m.accuracy(PREDS, np.array([0, 1, -1, 1, 0]))
    with pytest.raises(ValueError, match="float64"):
        m.accuracy(PREDS.astype(float), LABELS)
    with pytest.raises(ValueError, match="N=0"):
        m.accuracy(np.zeros((3, 0), dtype=int), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="reference=3"):
        m.churn_vs_reference(PREDS, LABELS, reference=3)
    with pytest.raises(ValueError, match="reference=-1"):
        m.churn_vs_reference(PREDS, LABELS, reference=-1)


def test_equal_accuracies_have_exactly_zero_spread():
    # 3 of 7 correct in every replica: mean of equal floats can round, the spread must not.
    labels = np.zeros(7, dtype=np.int64)
    preds = np.tile(np.array([0, 0, 0, 1, 1, 1, 1]), (10, 1))
    assert m.accuracy_summary(preds, labels)["std"] == 0.0


def test_equal_class_accuracies_have_exactly_zero_spread():
    # Class 0 has 3 examples, each replica gets 1 of them right (a different one): accuracy 1/3 in all
    # 10 replicas, whose float mean (10 * 0.333.../10) can round; the std must be 0.0, not ~1e-17.
    labels = np.array([0, 0, 0, 1])
    preds = np.array([[0, 1, 1, 1], [1, 0, 1, 1], [1, 1, 0, 1]] * 3 + [[0, 1, 1, 1]])
    df = m.per_class_summary(preds, labels, 2)
    assert df["std"].tolist() == [0.0, 0.0]
    # class 1 varies: right in 9 replicas, wrong in the last; mean 0.9, var 0.1 * 0.9 * 10/9 = 0.1
    preds[-1, 3] = 0
    df = m.per_class_summary(preds, labels, 2)
    assert df["std"][0] == 0.0 and df["std"][1] == pytest.approx(math.sqrt(0.1))


def test_distribution_variance_equal_accuracies_exactly_zero():
    # The same 3-of-7 accuracy in every replica but different examples right: observed 0.0 exactly.
    labels = np.zeros(7, dtype=np.int64)
    # Four copies of three replicas: 12 replicas, where np.var of twelve 3/7 gives ~3e-33.
    preds = np.array([[0, 0, 0, 1, 1, 1, 1], [1, 0, 0, 0, 1, 1, 1], [1, 1, 0, 0, 0, 1, 1]] * 4)
    d = m.distribution_variance(preds, labels)
    # p_n = 1/3, 2/3, 1, 2/3, 1/3, 0, 0: sum p(1-p) = 4 * 2/9 = 8/9; * R/(R-1) = 12/11; / N^2 = 49
    assert d["observed_var"] == 0.0
    assert d["predicted_var"] == pytest.approx(8 / 9 * 12 / 11 / 49)
    assert d["distribution_var_raw"] == -d["predicted_var"]
    assert d["distribution_var"] == pytest.approx(-7 / 6 * d["predicted_var"]) and d["negative"]
