"""analysis: the glue from run store to chapter tables, checked on a hand-made store against
numbers computed by hand (the fractions in the comments)."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from nnrandomness import analysis, store
from nnrandomness import stats as study_stats
from nnrandomness.train import ReplicaResult, ReplicaSpec

DIGITS = {"hardware": "cpu-1t", "dataset": "digits", "model": "smallcnn"}  # the hand-made store's main cell
LABELS = [0, 1, 2, 1]  # the "digits" cells: 4 test examples, 3 classes, no group attribute
GLABELS = [0, 0, 0, 1, 1, 1]  # the "digits_groups" cell: 6 examples, attribute below
GROUPS = [0, 0, 1, 1, 1, 0]  # subgroups (0, g0): 2 examples, (0, g1): 1 (rare), (1, g1): 2, (1, g0): 1 (rare)
ROOT3 = math.sqrt(3)


def fake(dataset, setting, replica, preds, labels, groups=None, offset=0.0) -> ReplicaResult:
    """A hand-made replica: weights w = arange(6) + offset (so |offset_i - offset_j| * sqrt(6)
    apart) and a BatchNorm buffer that differs wildly (it must not count in L2)."""
    preds = np.asarray(preds)
    n, c = len(preds), 3
    probs = np.full((n, c), 0.1, dtype=np.float32)
    probs[np.arange(n), preds] = 0.8
    return ReplicaResult(
        spec=ReplicaSpec(dataset=dataset, model="smallcnn", setting=setting, replica=replica, epochs=2),
        seeds={"init": 1, "order": 2, "aug": 3, "dropout": 4, "perturb": 5},
        history=pd.DataFrame(
            {"epoch": [1, 2], "test_accuracy": [0.5, float(np.mean(preds == labels))], "seconds": [0.1, 0.1]}
        ),
        predictions=preds,
        probabilities=probs,
        labels=np.asarray(labels),
        groups=None if groups is None else np.asarray(groups),
        weights={
            "w": torch.arange(6, dtype=torch.float32) + offset,
            "bn.running_mean": torch.full((2,), 100.0 * replica),
        },
        backend={"requested": {}, "effective": {}},
        environment={"torch": torch.__version__, "git_commit": "abc", "cpu_model": "test cpu"},
        timings={"train_seconds": 0.2},
    )


ALGO = [[0, 1, 2, 1], [1, 2, 2, 0], [2, 1, 2, 1]]  # accuracies 1, 1/4, 3/4
CONTROL = [0, 1, 2, 0]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    w = lambda hw, r: store.write_replica(root, hw, r)  # noqa: E731
    for setting in ("ALGO", "ALGO+IMPL"):  # same seeds, same bits: the CPU's twins
        for k, p in enumerate(ALGO):
            w("cpu-1t", fake("digits", setting, k, p, LABELS, offset=float(k)))
    for setting in ("CONTROL", "IMPL"):
        for k in range(2):
            r = fake("digits", setting, k, CONTROL, LABELS)
            w(
                "cpu-1t",
                dataclasses.replace(
                    r, weights={"w": torch.arange(6, dtype=torch.float32), "bn.running_mean": torch.zeros(2)}
                ),
            )
    # The thread-count variant: replica 0 flips example 3 and moves its weights by 0.5, replica 1 is identical.
    w("cpu-2t", fake("digits", "ALGO", 0, [0, 1, 2, 2], LABELS, offset=0.5))
    w("cpu-2t", fake("digits", "ALGO", 1, ALGO[1], LABELS, offset=1.0))
    for k in range(2):
        r = fake("digits", "CONTROL", k, [0, 1, 2, 1], LABELS)
        w(
            "cpu-2t",
            dataclasses.replace(
                r, weights={"w": torch.arange(6, dtype=torch.float32) + 0.25, "bn.running_mean": torch.zeros(2)}
            ),
        )
    for k, p in enumerate([[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0]]):
        w("cpu-1t", fake("digits_groups", "ALGO", k, p, GLABELS, GROUPS, offset=float(k)))
    # Six replicas, for the bootstrap intervals (they need MIN_REPLICAS_CI = 5).
    for k, p in enumerate([[0, 1, 2, 1], [0, 1, 2, 0], [0, 1, 1, 1], [0, 2, 2, 1], [1, 1, 2, 1], [0, 1, 2, 1]]):
        w("cpu-1t", fake("digits", "ORDER", k, p, LABELS, offset=float(k)))
    return root


@pytest.fixture(scope="module")
def runs(root):
    return store.load_runs(root)


@pytest.fixture(scope="module")
def top(runs):
    return analysis.topline(runs)


def row(frame, **key):
    mask = np.ones(len(frame), dtype=bool)
    for k, v in key.items():
        mask &= (frame[k] == v).to_numpy()
    assert mask.sum() == 1, f"{key}: {mask.sum()} rows"
    return frame[mask].iloc[0]


# ----------------------------------------------------------------------------- top line
def test_topline_by_hand(top):
    r = row(top, hardware="cpu-1t", dataset="digits", setting="ALGO")
    assert r["n_replicas"] == 3 and r["n_examples"] == 4
    assert r["acc_mean"] == pytest.approx(2 / 3)
    # deviations 1/3, -5/12, 1/12: var = (16 + 25 + 1) / 144 / 2 = 7/48
    assert r["acc_std"] == pytest.approx(math.sqrt(7 / 48))
    # pairs (0,1): 3/4, (0,2): 1/4, (1,2): 3/4
    assert r["churn"] == pytest.approx(7 / 12)
    # one right / one wrong: 2 pairs on examples 0, 1 and 3 each = 6 of 12 pair-examples; both
    # wrong and different: example 0, replicas 1 and 2 = 1 of 12
    assert r["one_correct"] == pytest.approx(1 / 2) and r["both_wrong"] == pytest.approx(1 / 12)
    # w differs by 1, 2, 1 per element over 6 elements; the BatchNorm buffer is left out
    assert r["l2"] == pytest.approx(4 / 3 * math.sqrt(6))
    assert np.isnan(r["acc_std_lo"]) and np.isnan(r["churn_hi"]) and np.isnan(r["l2_lo"])  # R = 3 < 5
    assert r["n_weight_hashes"] == 3 and not r["expects_identical"] and not r["identical"]


def test_topline_control_is_exactly_zero(top):
    r = row(top, hardware="cpu-1t", dataset="digits", setting="CONTROL")
    assert r["acc_std"] == 0.0 and r["churn"] == 0.0 and r["l2"] == 0.0
    assert r["expects_identical"] and r["identical"] and r["n_weight_hashes"] == 1
    assert list(top["setting"][:4]) == ["ALGO+IMPL", "ALGO", "IMPL", "CONTROL"]  # the book's order


def test_topline_intervals_are_seeded_and_bracket(runs, top):
    r = row(top, hardware="cpu-1t", dataset="digits", setting="ORDER")
    assert r["n_replicas"] == 6
    for m in ("acc_std", "churn", "l2"):
        assert r[f"{m}_lo"] <= r[f"{m}_hi"]
        assert r[f"{m}_lo"] <= r[m] * 1.5 and r[f"{m}_hi"] >= r[m] * 0.5
    again = analysis.topline(runs)
    pd.testing.assert_frame_equal(top, again)  # fixed seed: the same numbers every time
    other = analysis.topline(runs, seed=1)
    bounds = ["churn_lo", "churn_hi", "l2_lo", "l2_hi"]  # 6 replicas: some quantiles land on the same pair mean
    assert list(row(other, setting="ORDER", dataset="digits", hardware="cpu-1t")[bounds]) != list(r[bounds])
    # The SD's interval is the chi-square one: no resampling, the same for any seed.
    assert stats.chi2.ppf(0.975, 5) == pytest.approx(5 * r["acc_std"] ** 2 / r["acc_std_lo"] ** 2)


def test_pair_mean_leaves_out_self_pairs():
    # stats' resample pair mean, by replica multiplicities: replica 0 drawn twice, 1 once.
    d = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 3.0], [2.0, 3.0, 0.0]])
    means = study_stats._pair_means(d, np.array([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 3.0]]))
    assert means[0] == 1.0 and means[1] == 2.0  # (0,0) left out, (0,1) twice; all three pairs
    assert np.isnan(means[2])  # no pair of distinct replicas: dropped by the interval


def test_identity_and_twins(runs):
    ident = analysis.identity(runs)
    c = row(ident, hardware="cpu-1t", dataset="digits", setting="CONTROL")
    assert c["identical"] and c["expects_identical"] and len(c["weights_hash"]) == 12
    assert row(ident, hardware="cpu-1t", dataset="digits", setting="ALGO")["weights_hash"] == "(differ)"
    twins = analysis.twin_identity(runs)
    t = row(twins, hardware="cpu-1t", dataset="digits", setting="IMPL")
    assert t["twin"] == "CONTROL" and t["n_matched"] == 2 and t["all_identical"]
    t = row(twins, hardware="cpu-1t", dataset="digits", setting="ALGO+IMPL")
    assert t["n_matched"] == 3 and t["n_identical"] == 3


# ----------------------------------------------------------------------------- per class
def test_per_class_by_hand(runs):
    pc = analysis.per_class(runs)
    algo = pc[(pc.hardware == "cpu-1t") & (pc.dataset == "digits") & (pc.setting == "ALGO")]
    assert algo["class"].tolist() == [0, 1, 2] and algo["n_examples"].tolist() == [1, 2, 1]
    # class 0: right in replica 0 only; class 1: replicas 0 and 2; class 2: always right
    assert algo["mean"].tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert algo["std"].tolist() == pytest.approx([1 / ROOT3, 1 / ROOT3, 0.0])
    assert algo["std"].iloc[2] == 0.0  # exactly
    spread = analysis.per_class_spread(runs, pc)
    s = row(spread, hardware="cpu-1t", dataset="digits", setting="ALGO")
    assert s["class_max"] == 0 and s["class_std_max"] == pytest.approx(1 / ROOT3)
    assert s["ratio_max"] == pytest.approx((1 / ROOT3) / math.sqrt(7 / 48))
    control = row(spread, hardware="cpu-1t", dataset="digits", setting="CONTROL")
    assert np.isnan(control["ratio_max"]) and pd.isna(control["class_max"]) and control["class_std_max"] == 0.0


# ----------------------------------------------------------------------------- subgroups
def test_subgroups_by_hand(runs):
    subs = analysis.subgroups(runs)
    assert set(subs["dataset"]) == {"digits_groups"}  # cells without a group attribute are skipped
    get = lambda c, g: row(subs, **{"class": c, "group": g})  # noqa: E731
    # FNR per replica: (0, g0) [0, 1/2, 0]; (0, g1) [0, 1, 1]; (1, g1) [0, 0, 1/2]; (1, g0) [0, 0, 1]
    assert get(0, 0)["fnr_mean"] == pytest.approx(1 / 6) and get(0, 0)["fnr_std"] == pytest.approx(math.sqrt(1 / 12))
    assert get(0, 1)["fnr_mean"] == pytest.approx(2 / 3) and get(0, 1)["fnr_std"] == pytest.approx(1 / ROOT3)
    assert get(1, 0)["fnr_std"] == pytest.approx(1 / ROOT3) and get(1, 0)["recall_mean"] == pytest.approx(2 / 3)
    # FPR of class 0 in group 1: negatives are examples 3 and 4; replica 2 calls example 4 a 0
    assert get(0, 1)["fpr_mean"] == pytest.approx(1 / 6)
    assert [get(c, g)["n_subgroup"] for c, g in [(0, 0), (0, 1), (1, 0), (1, 1)]] == [2, 1, 1, 2]
    assert [bool(get(c, g)["rare"]) for c, g in [(0, 0), (0, 1), (1, 0), (1, 1)]] == [False, True, True, False]
    assert get(0, 1)["share"] == pytest.approx(1 / 3)
    rc = analysis.rare_vs_common(subs).set_index("subgroups")
    assert list(rc.index) == ["rare", "common"]
    assert rc.at["rare", "fnr_std"] == pytest.approx(1 / ROOT3)
    assert rc.at["common", "fnr_std"] == pytest.approx(math.sqrt(1 / 12))
    rates = analysis.subgroup_rates(runs)
    assert sorted(rates["replica"].unique()) == [0, 1, 2] and (rates["recall"] == 1 - rates["fnr"]).all()


# ----------------------------------------------------------------------------- per example
def test_per_example_and_variance(runs):
    ex = analysis.per_example(runs)
    algo = ex[(ex.hardware == "cpu-1t") & (ex.dataset == "digits") & (ex.setting == "ALGO")].set_index("example")
    assert algo.loc[0, "frac_correct"] == pytest.approx(1 / 3) and algo.loc[0, "n_distinct"] == 3
    assert algo.loc[0, "modal_prediction"] == 0  # a three-way tie goes to the smallest class
    assert algo.loc[1, "modal_prediction"] == 1 and algo.loc[1, "modal_agreement"] == pytest.approx(2 / 3)
    assert algo["flips"].tolist() == [True, True, False, True]
    summ = analysis.instability_summary(ex)
    s = row(summ, hardware="cpu-1t", dataset="digits", setting="ALGO")
    assert s["n_flip"] == 3 and s["share_flip"] == 0.75 and s["n_always_wrong"] == 0 and s["n_sometimes_wrong"] == 3
    votes = analysis.examples_votes(runs.predictions[runs.predictions.setting == "ALGO"], examples=[0])
    v = votes[(votes.hardware == "cpu-1t") & (votes.dataset == "digits")]
    assert v["prediction"].tolist() == [0, 1, 2] and v["votes"].tolist() == [1, 1, 1]
    dv = analysis.distribution_variance(runs)
    d = row(dv, hardware="cpu-1t", dataset="digits", setting="ALGO")
    # p_n = 1/3, 2/3, 1, 2/3: sum p(1-p) = 2/3; * R/(R-1) = 1; / N^2 = 1/16
    assert d["observed_var"] == pytest.approx(7 / 48) and d["predicted_var"] == pytest.approx(1 / 16)
    assert d["ratio"] == pytest.approx(7 / 3) and d["observed_std"] == pytest.approx(math.sqrt(7 / 48))
    c = row(dv, hardware="cpu-1t", dataset="digits", setting="CONTROL")
    assert c["observed_var"] == 0.0 and np.isnan(c["ratio"])


# ----------------------------------------------------------------------------- hardware
def test_hardware_compare_by_hand(runs, root):
    hw = analysis.hardware_compare(runs, weights=True)
    a = row(hw, dataset="digits", setting="ALGO")
    assert (a["hardware_a"], a["hardware_b"], a["n_a"], a["n_b"], a["n_matched"]) == ("cpu-1t", "cpu-2t", 3, 2, 2)
    assert a["churn_matched"] == pytest.approx((1 / 4 + 0) / 2)  # replica 0: example 3 flips; replica 1: same
    assert a["n_identical"] == 1
    assert a["churn_cross"] == pytest.approx(3 / 6)  # 1/4 + 3/4 + 3/4 + 0 + 1/2 + 3/4 over 6 pairs
    assert a["churn_within_a"] == pytest.approx(7 / 12) and a["churn_within_b"] == pytest.approx(3 / 4)
    assert a["l2_matched"] == pytest.approx(0.5 * math.sqrt(6) / 2)
    c = row(hw, dataset="digits", setting="CONTROL")
    assert c["churn_matched"] == pytest.approx(1 / 4) and c["churn_within_a"] == 0.0 and c["n_identical"] == 0
    assert c["l2_matched"] == pytest.approx(0.25 * math.sqrt(6))
    assert analysis.hardware_compare(store.load_runs(root, hardware="cpu-1t")).empty  # one label: nothing to compare


# ----------------------------------------------------------------------------- runs, missing
def test_runs_table(runs):
    t = analysis.runs_table(runs)
    r = row(t, hardware="cpu-1t", dataset="digits", setting="ALGO")
    assert r["replicas"] == 3 and r["epochs"] == "2" and r["acc_mean"] == pytest.approx(2 / 3)


def test_missing_and_empty_store(runs, tmp_path):
    assert (
        analysis.missing(runs, hardware="cpu-1t", dataset="digits", model="smallcnn", settings=["ALGO", "CONTROL"])
        == []
    )
    lines = analysis.missing(runs, hardware="cpu-1t", dataset="digits", model="smallcnn", settings=["ULP", "ALGO"])
    assert lines == ["cpu-1t/digits/smallcnn/ULP: 0 replica(s), needs at least 2"]
    assert "`../data/runs`" in analysis.missing_note(lines, "../data/runs") and analysis.missing_note([], "x") == ""
    empty = store.load_runs(tmp_path / "nothing-here")
    for frame in (
        analysis.topline(empty),
        analysis.per_class(empty),
        analysis.subgroups(empty),
        analysis.per_example(empty),
        analysis.hardware_compare(empty),
        analysis.identity(empty),
        analysis.twin_identity(empty),
        analysis.runs_table(empty),
        analysis.distribution_variance(empty),
    ):
        assert frame.empty and len(frame.columns) > 3
    lines = analysis.missing(empty, hardware="h", dataset="d", model="m", settings=["ALGO"])
    assert lines[0].startswith("h/d/m/ALGO: 0")


def test_subgroup_noise_and_churn_flips(runs):
    noise_ = analysis.subgroup_noise(runs)
    r = row(noise_, **{"class": 0, "group": 1})  # one example, right in replica 0 only: FNR 0, 1, 1
    assert r["n_subgroup"] == 1 and r["fnr_observed_std"] == pytest.approx(1 / ROOT3)
    # p = 1/3: p(1-p) * R/(R-1) / k^2 = 2/9 * 3/2 = 1/3
    assert r["fnr_predicted_std"] == pytest.approx(1 / ROOT3)
    flips = analysis.churn_flips(runs)
    f = row(flips, hardware="cpu-1t", dataset="digits", setting="ALGO")
    # against replica 0 (all right): replica 1 gets 3 of 4 wrong, replica 2 gets 1 of 4 wrong
    assert f["correct_to_wrong"] == pytest.approx(1 / 2) and f["wrong_to_correct"] == 0.0
    assert f["churn"] == pytest.approx(1 / 2)


def test_subgroup_noise_summary(runs):
    s = analysis.subgroup_noise_summary(analysis.subgroup_noise(runs), analysis.subgroups(runs))
    assert set(s["dataset"]) == {"digits_groups"} and s["subgroups"].tolist() == ["common", "rare"]
    s = s.set_index("subgroups")
    # FNR per replica, rare (0, g1) [0, 1, 1] and (1, g0) [0, 0, 1]: std 1/sqrt(3) each;
    # common (0, g0) [0, 1/2, 0] and (1, g1) [0, 0, 1/2]: std sqrt(1/12) each
    assert s.at["rare", "fnr_observed_std"] == pytest.approx(1 / ROOT3)
    assert s.at["common", "fnr_observed_std"] == pytest.approx(math.sqrt(1 / 12))
    # one example right in 1 of 3 replicas: p(1-p) * R/(R-1) = 2/9 * 3/2 = 1/3 for both rare subgroups
    assert s.at["rare", "fnr_predicted_std"] == pytest.approx(1 / ROOT3)
    assert analysis.subgroup_noise_summary(analysis.subgroup_noise(runs).iloc[:0], analysis.subgroups(runs)).empty


# ----------------------------------------------------------------------------- decided by tests
def test_churn_and_sd_tests_on_the_hand_made_store(runs):
    churn = analysis.churn_tests(runs, DIGITS, n=199)
    assert list(churn["name"]) == ["churn_order_vs_algo"]  # the only single source stored
    r = churn.iloc[0]
    order = runs.select(hardware="cpu-1t", dataset="digits", model="smallcnn", setting="ORDER")
    order_churn = analysis.topline(order, weights=False)["churn"].iloc[0]
    assert r["observed"] == pytest.approx(order_churn - 7 / 12) and r["effect"] == pytest.approx(r["observed"])
    assert r["effect_lo"] <= r["effect"] <= r["effect_hi"] and (r["n_a"], r["n_b"]) == (6, 3)
    assert 1 / 200 <= r["pvalue"] <= 1 and r["p_adjusted"] == r["pvalue"]  # a family of one

    sd = analysis.sd_tests(runs, DIGITS, n=199)
    # CONTROL has 2 replicas (< 3): only ALGO is a reference here; ALGO+IMPL is ALGO bit for bit.
    assert list(sd["name"]) == ["sd_algo_impl_vs_algo", "sd_order_vs_algo"]
    twin = sd.iloc[0]
    assert twin["observed"] == 0.0 and twin["pvalue"] == 1.0 and twin["sd_a"] == pytest.approx(math.sqrt(7 / 48))
    assert twin["sd_b_chi2_lo"] == pytest.approx(math.sqrt(2 * 7 / 48 / stats.chi2.ppf(0.975, 2)))
    np.testing.assert_allclose(sd["p_adjusted"], study_stats.holm(sd["pvalue"]))


def test_spread_null_tests_by_hand(runs):
    codes, rare = analysis._subgroup_codes(np.array(GLABELS), np.array(GROUPS), 0.5)
    # codes label * 2 + attribute: (0, g0) x2, (0, g1), (1, g1) x2, (1, g0); the single ones are rare.
    assert list(codes) == [0, 0, 1, 3, 3, 2] and list(rare) == [False, True, True, False]
    t = analysis.spread_null_tests(runs, DIGITS, groups_dataset="digits_groups", n=199)
    assert list(t["name"]) == ["class_spread_algo", "subgroup_spread_algo"]
    sub = t.iloc[1]
    # rare subgroups' FNR std 1/sqrt(3), common 0.5/sqrt(3) (see test_subgroups_by_hand): ratio 2
    assert sub["observed"] == pytest.approx(2.0) and sub["effect"] == pytest.approx(2.0 - sub["null_median"])
    cls = t.iloc[0]
    top = analysis.per_class_spread(runs.select(hardware="cpu-1t", dataset="digits", setting="ALGO"))
    assert cls["observed"] == pytest.approx(top["ratio_max"].iloc[0]) and (cls["n_a"], cls["n_b"]) == (3, 4)
    assert t["pvalue"].between(1 / 200, 1).all()


@pytest.fixture(scope="module")
def ulp_runs(tmp_path_factory):
    """CONTROL (3 identical replicas), ULP (3: two back on CONTROL's predictions, the third
    wrong on example 2 instead of 3, so with the same accuracy) and ALGO."""
    root = tmp_path_factory.mktemp("ulp")
    for k in range(3):
        store.write_replica(root, "cpu-1t", fake("digits", "CONTROL", k, CONTROL, LABELS))
        store.write_replica(root, "cpu-1t", fake("digits", "ULP", k, CONTROL if k < 2 else [0, 1, 0, 1], LABELS))
        store.write_replica(root, "cpu-1t", fake("digits", "ALGO", k, ALGO[k], LABELS, offset=float(k)))
    return store.load_runs(root)


def test_ulp_tests_by_hand(ulp_runs):
    t = analysis.ulp_tests(ulp_runs, DIGITS, n=199).set_index("name")
    share = t.loc["ulp_returns_to_control"]
    assert share["effect"] == pytest.approx(2 / 3) and np.isnan(share["pvalue"]) and np.isnan(share["p_adjusted"])
    assert share["effect_lo"] == pytest.approx(stats.beta.ppf(0.025, 2, 2))
    churn = t.loc["churn_ulp_vs_algo"]
    # ULP pairs differ on 0, 2, 2 of 4 examples: churn 1/3; ALGO's is 7/12.
    assert churn["observed"] == pytest.approx(1 / 3 - 7 / 12) and churn["p_adjusted"] == churn["pvalue"]


def with_extra(runs, extra: dict) -> store.Runs:
    """The view with ``extra_accuracy``/``extra_n`` on the replicas of the given settings."""
    reps = runs.replicas.copy()
    reps["extra_accuracy"] = [extra.get(s, [None] * 10)[r] for s, r in zip(reps["setting"], reps["replica"])]
    reps["extra_n"] = 100
    return store.Runs(reps, runs.predictions, runs.history)


def test_variance_direct_and_its_test(ulp_runs):
    # ALGO's accuracies on two extra sets: (0.1, 0.3), (0.2, 0.2), (0.3, 0.1): covariance -0.01.
    part = with_extra(ulp_runs, {"ALGO": [[0.1, 0.3], [0.2, 0.2], [0.3, 0.1]]})
    v = analysis.variance_direct(part, n=199).set_index("setting")
    assert v.at["ALGO", "direct_var"] == pytest.approx(-0.01) and v.at["ALGO", "n_sets"] == 2
    assert v.at["ALGO", "n_per_set"] == 100 and v.at["ALGO", "pooled_var"] == pytest.approx(0.0)
    assert np.isnan(v.at["ULP", "direct_var"])  # no extra test sets stored
    assert v.at["CONTROL", "jordan_var"] == 0.0 and not v.at["CONTROL", "jordan_negative"]
    # Jordan on ALGO: observed 7/48; p_n = 1/3, 2/3, 1, 2/3: sum p(1-p) = 2/3, predicted
    # 2/3 * 3/2 / 16 = 3/48; estimate 4/3 * (7/48 - 3/48) = 1/9.
    assert v.at["ALGO", "jordan_var"] == pytest.approx(1 / 9)
    t = analysis.variance_tests(part, n=199)
    assert len(t) == 1 and t["effect"].iloc[0] == pytest.approx(1 / 9 + 0.01) and t["n_b"].iloc[0] == 2


def test_distribution_variance_reports_negative_estimates(ulp_runs):
    dv = analysis.distribution_variance(ulp_runs).set_index("setting")
    ulp = dv.loc["ULP"]  # accuracy 3/4 in every replica: observed 0; p_n = 1, 1, 2/3, 1/3
    # predicted 4/9 * 3/2 / 16 = 1/24: estimate 4/3 * (0 - 1/24) = -1/18, reported, not clipped
    assert ulp["distribution_var"] == pytest.approx(-1 / 18) and ulp["negative"]
    assert ulp["distribution_std"] == pytest.approx(-math.sqrt(1 / 18))
