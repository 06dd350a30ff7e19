"""stats: intervals, permutation tests, Holm and the independent-examples null, against values
worked out by hand (or from scipy's quantiles, step by step) and against seeded simulations."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from nnrandomness import metrics
from nnrandomness import stats as st

FIVE = np.array([1.0, 2.0, 3.0, 4.0, 10.0])  # mean 4, sum of squares about the mean 50, s^2 = 12.5


# ----------------------------------------------------------------------------- SD intervals
def test_chi2_sd_interval_by_hand():
    iv = st.sd_interval(FIVE, level=0.95, method="chi2")
    s = math.sqrt(12.5)
    q_lo, q_hi = sps.chi2.ppf(0.025, 4), sps.chi2.ppf(0.975, 4)  # 0.4844, 11.1433
    assert q_lo == pytest.approx(0.484419, rel=1e-5) and q_hi == pytest.approx(11.143287, rel=1e-6)
    assert iv.estimate == pytest.approx(s)
    assert iv.low == pytest.approx(math.sqrt(4 * 12.5 / q_hi)) and iv.high == pytest.approx(math.sqrt(4 * 12.5 / q_lo))
    assert iv.low == pytest.approx(2.1183, abs=1e-4) and iv.high == pytest.approx(10.1596, abs=1e-4)
    assert (iv.n, iv.method, iv.level) == (5, "chi2", 0.95)


def test_bonett_sd_interval_by_hand():
    # n = 5: trim proportion 1/(2 sqrt(1)) = 0.5 leaves the median, m = 3.
    # sum (x - 3)^4 = 16 + 1 + 0 + 1 + 2401 = 2419; kurtosis k = 5 * 2419 / 50^2 = 4.838.
    z = sps.norm.ppf(0.975)
    c = 5 / (5 - z)
    se = c * math.sqrt((4.838 - 2 / 5) / 4)
    low = math.exp((math.log(c * 12.5) - z * se) / 2)
    high = math.exp((math.log(c * 12.5) + z * se) / 2)
    iv = st.sd_interval(FIVE, method="bonett")
    assert iv.low == pytest.approx(low) and iv.high == pytest.approx(high) and iv.method == "bonett"
    assert iv.low < iv.estimate < iv.high


def test_sd_interval_of_equal_values_is_exactly_zero():
    for method in ("chi2", "bonett"):
        iv = st.sd_interval([0.1] * 3 + [0.1], method=method)
        assert (iv.estimate, iv.low, iv.high) == (0.0, 0.0, 0.0)


def test_sd_interval_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        st.sd_interval([1.0])
    with pytest.raises(ValueError, match="method"):
        st.sd_interval(FIVE, method="percentile")
    with pytest.raises(ValueError, match="level"):
        st.sd_interval(FIVE, level=1.5)


def test_chi2_interval_is_calibrated_at_n_10():
    rng = np.random.default_rng(20)
    samples = rng.normal(5.0, 2.0, size=(300, 10))
    covered = [st.sd_interval(x).low <= 2.0 <= st.sd_interval(x).high for x in samples]
    assert 0.93 <= np.mean(covered) <= 0.97
    # Bonett pays for robustness with width, not with coverage.
    bonett = [st.sd_interval(x, method="bonett") for x in samples]
    assert 0.92 <= np.mean([b.low <= 2.0 <= b.high for b in bonett]) <= 0.99


def test_bonett_keeps_coverage_where_chi2_loses_it():
    # Skewed, heavy-tailed data (exponential, SD 1): the chi-square interval assumes normality and
    # covers the SD in about 70-77 % of samples; Bonett's kurtosis adjustment gets much closer to 95 %.
    rng = np.random.default_rng(21)
    for n in (10, 30):
        samples = rng.exponential(1.0, size=(300, n))
        cover = {}
        for method in ("chi2", "bonett"):
            intervals = [st.sd_interval(x, method=method) for x in samples]
            cover[method] = np.mean([iv.low <= 1.0 <= iv.high for iv in intervals])
        assert cover["chi2"] < 0.8 and cover["bonett"] > cover["chi2"] + 0.08, (n, cover)


# ----------------------------------------------------------------------------- bootstrap
def test_bca_reduces_to_percentile_without_bias_or_skew():
    boot = np.linspace(-1, 1, 1001)  # symmetric about the estimate 0: z0 = 0; constant jackknife: a = 0
    low, high = st.bca(0.0, boot, np.zeros(5))
    assert low == pytest.approx(np.quantile(boot, 0.025)) and high == pytest.approx(np.quantile(boot, 0.975))


def test_bootstrap_pairs_exclude_copies_of_one_replica():
    # Every pair of distinct replicas is 1 apart: a resample's pair mean over distinct ORIGINAL
    # replicas is always 1, so the interval is exactly [1, 1]; counting a replica with its own copy
    # (distance 0) would pull resamples below 1.
    d = 1.0 - np.eye(10)
    iv = st.bootstrap_interval(d, pairs=True, n_boot=500)
    assert (iv.estimate, iv.low, iv.high, iv.n) == (1.0, 1.0, 1.0, 10)


def test_bootstrap_interval_is_deterministic_and_sensible():
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 1.0, size=30)
    a, b = st.bootstrap_interval(x, "sd", seed=7), st.bootstrap_interval(x, "sd", seed=7)
    assert a == b and a.low < a.estimate < a.high and a.estimate == pytest.approx(np.std(x, ddof=1))
    m = st.bootstrap_interval(x, "mean")
    assert m.low < x.mean() < m.high
    flat = st.bootstrap_interval(np.full(6, 0.5))
    assert (flat.estimate, flat.low, flat.high) == (0.0, 0.0, 0.0)


def test_difference_interval_of_two_settings():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0, 3.0, 40), rng.normal(0, 1.0, 40)
    iv = st.difference_interval(a, b, "sd")
    assert iv.estimate == pytest.approx(np.std(a, ddof=1) - np.std(b, ddof=1)) and iv.low > 0 and iv.n == 80
    same = st.difference_interval(a[:20], a[20:], "sd")
    assert same.low < 0 < same.high


# ----------------------------------------------------------------------------- permutation tests
def test_permutation_churn_identical_groups_give_p_one():
    rng = np.random.default_rng(5)
    preds = rng.integers(0, 3, size=(1, 40)).repeat(8, axis=0)  # every replica the same: no churn anywhere
    res = st.permutation_test(preds[:4], preds[4:], "churn", n_perm=200, seed=0)
    assert res.observed == 0.0 and res.pvalue == 1.0 and (res.n_a, res.n_b) == (4, 4)


def test_permutation_churn_separated_groups_give_the_smallest_p():
    rng = np.random.default_rng(6)
    stable = np.zeros((10, 60), dtype=np.int64)  # never churns
    wild = rng.integers(0, 5, size=(10, 60))  # churns about 80 %
    res = st.permutation_test(stable, wild, "churn", n_perm=999, seed=1)
    assert res.observed == pytest.approx(-metrics.churn(wild)) and res.pvalue == 1 / 1000


def test_permutation_sd():
    rng = np.random.default_rng(7)
    a = rng.normal(0.9, 0.01, 10)
    assert st.permutation_test(np.full(10, 0.9), np.full(10, 0.8), "sd_log_ratio").pvalue == 1.0
    zero = st.permutation_test(a, np.full(10, 0.95), "sd_log_ratio", n_perm=999)
    assert zero.observed == math.inf and zero.pvalue == 1 / 1000
    far = st.permutation_test(a, 0.5 + 20 * (a - 0.9), "sd_difference", n_perm=999)
    assert far.observed < 0 and far.pvalue == 1 / 1000
    same = st.permutation_test(a, rng.normal(0.3, 0.01, 10), "sd_log_ratio", n_perm=999)
    assert same.pvalue > 0.1  # equal spreads, different means (centred before pooling)
    assert st.permutation_test(a, a[::-1] + 1, "sd_log_ratio", seed=3) == st.permutation_test(
        a, a[::-1] + 1, "sd_log_ratio", seed=3
    )


def test_permutation_rejects_bad_input():
    with pytest.raises(ValueError, match="statistic"):
        st.permutation_test([1.0, 2.0], [1.0, 3.0], "median")
    with pytest.raises(ValueError, match="same N"):
        st.permutation_test(np.zeros((3, 4), int), np.zeros((3, 5), int), "churn")


# ----------------------------------------------------------------------------- Holm, Clopper-Pearson
def test_holm_by_hand():
    np.testing.assert_allclose(st.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(st.holm([0.5, float("nan"), 0.01]), [0.5, float("nan"), 0.02])
    np.testing.assert_allclose(st.holm([0.9, 0.8]), [1.0, 1.0])  # 0.8 * 2 capped at 1; monotone
    assert st.holm([]).shape == (0,)


def test_clopper_pearson_by_hand():
    iv = st.clopper_pearson(0, 10)
    assert iv.low == 0.0 and iv.high == pytest.approx(1 - 0.025 ** (1 / 10))  # (1 - high)^10 = 0.025
    iv = st.clopper_pearson(10, 10)
    assert iv.high == 1.0 and iv.low == pytest.approx(0.025 ** (1 / 10))
    iv = st.clopper_pearson(2, 10)
    assert iv.estimate == 0.2 and iv.low == pytest.approx(sps.beta.ppf(0.025, 2, 9))
    with pytest.raises(ValueError, match="k must"):
        st.clopper_pearson(11, 10)


# ----------------------------------------------------------------------------- independent-examples null
def test_poisson_binomial_by_hand():
    np.testing.assert_allclose(st._poisson_binomial(np.array([0.5, 0.5])), [0.25, 0.5, 0.25])
    np.testing.assert_allclose(st._poisson_binomial(np.array([0.2, 1.0])), [0.0, 0.8, 0.2])


def together_and_independent(seed=0, r=40):
    """Two classes of 20 examples. Class 0's examples all flip TOGETHER (a replica gets the whole
    class right or wrong); class 1's examples flip independently (each right with probability 0.8)."""
    rng = np.random.default_rng(seed)
    together = np.repeat(rng.random((r, 1)) < 0.8, 20, axis=1)
    independent = rng.random((r, 20)) < 0.8
    return np.hstack([together, independent]).astype(int), np.repeat([0, 1], 20)


def test_null_finds_examples_that_flip_together():
    correct, groups = together_and_independent()
    out = st.independent_null(correct, groups, "max", n_sim=999, n_boot=500)
    # Observed: class 0's accuracy is 0 or 1, SD about 0.4; independent examples give about
    # sqrt(0.16 / 20) = 0.09.
    assert out["observed"] == pytest.approx(np.std(correct[:, :20].mean(axis=1), ddof=1))
    assert out["null_median"] == pytest.approx(0.09, abs=0.03)
    assert out["excess_low"] > 0 and out["pvalue"] == 1 / 1000 and out["ratio"] > 3
    g = out["groups"]
    assert list(g["n"]) == [20, 20] and g["sd"][0] > g["null_high"][0]
    assert g["null_low"][1] <= g["sd"][1] <= g["null_high"][1]  # class 1 is what the null predicts


def test_null_does_not_find_independent_examples():
    # A calibrated test rejects at 5 % on about one seed in twenty; this seed's data is one of the
    # others (the rejection rate itself is checked in test_null_is_calibrated).
    rng = np.random.default_rng(2)
    correct = (rng.random((40, 60)) < np.linspace(0.5, 1.0, 60)).astype(int)
    groups = np.repeat([0, 1, 2], 20)
    for statistic in ("max", "max_ratio", "mean"):
        out = st.independent_null(correct, groups, statistic, n_sim=999, n_boot=500, seed=2)
        assert out["pvalue"] > 0.05 and out["excess_low"] < 0 < out["excess_high"], (statistic, out)
    rare = np.array([True, False, False])
    out = st.independent_null(correct, groups, "rare_common_ratio", rare=rare, n_sim=999, n_boot=500)
    assert out["pvalue"] > 0.05 and out["ratio_low"] < 1 < out["ratio_high"]


def test_null_is_calibrated():
    # 100 studies of 10 replicas whose examples ARE independent: the test rejects at 5 % in about
    # 5 % of them (binomial SD 2.2 points). Using the observed rates p_n makes the null's Bernoulli
    # variances (R-1)/R too small on average, so at R = 10 it is slightly liberal, not badly so.
    groups = np.repeat([0, 1, 2], 20)
    pvalues = []
    for seed in range(100):
        rng = np.random.default_rng(100 + seed)
        correct = (rng.random((10, 60)) < np.linspace(0.5, 1.0, 60)).astype(int)
        pvalues.append(st.independent_null(correct, groups, "max", n_sim=199, n_boot=1, seed=seed)["pvalue"])
    assert 0.0 <= np.mean(np.array(pvalues) <= 0.05) <= 0.11


def test_null_of_replicas_that_never_differ():
    correct = np.tile([1, 0, 1, 1], (5, 1))  # bit-identical replicas: no spread anywhere
    out = st.independent_null(correct, np.array([0, 0, 1, 1]), "max_ratio", n_sim=99, n_boot=10)
    assert np.isnan(out["observed"]) and np.isnan(out["pvalue"])
    out = st.independent_null(correct, np.array([0, 0, 1, 1]), "max", n_sim=99, n_boot=10)
    assert out["observed"] == 0.0 and out["null_median"] == 0.0 and out["pvalue"] == 1.0


def test_null_rejects_bad_input():
    correct, groups = together_and_independent()
    with pytest.raises(ValueError, match="rare"):
        st.independent_null(correct, groups, "rare_common_ratio")
    with pytest.raises(ValueError, match="0 and 1"):
        st.independent_null(correct * 2, groups)
    with pytest.raises(ValueError, match="groups"):
        st.independent_null(correct, groups[:-1])


# ----------------------------------------------------------------------------- variance over the distribution
def test_jordan_variance_matches_the_corrected_metric():
    rng = np.random.default_rng(8)
    correct = (rng.random((12, 50)) < 0.7).astype(int)
    labels = np.zeros(50, dtype=np.int64)
    d = metrics.distribution_variance(1 - correct, labels)  # prediction 0 = right
    iv = st.jordan_variance(correct, n_boot=300)
    assert iv.estimate == pytest.approx(d["distribution_var"]) and iv.low <= iv.estimate <= iv.high


def test_direct_variance_by_hand():
    # Two sets: accuracies (0.1, 0.3), (0.2, 0.2), (0.3, 0.1). The sets' covariance across
    # replicas is ((-0.1)(0.1) + 0 + (0.1)(-0.1)) / 2 = -0.01: a negative estimate, reported so.
    x = np.array([[0.1, 0.3], [0.2, 0.2], [0.3, 0.1]])
    out = st.direct_distribution_variance(x, extra_n=100, n_boot=200)
    assert out["estimate"] == pytest.approx(-0.01) and out["pooled_var"] == pytest.approx(0.0)
    assert out["finite_sample_var"] == pytest.approx(0.01) and (out["n_sets"], out["n_per_set"]) == (2, 100)


def test_direct_variance_recovers_a_known_distribution_variance():
    # Replica r's true accuracy a_r (SD 0.02: variance 4e-4) plus independent per-set noise of SD 0.05.
    rng = np.random.default_rng(9)
    a = rng.normal(0.9, 0.02, size=(200, 1))
    x = a + rng.normal(0, 0.05, size=(200, 20))
    out = st.direct_distribution_variance(x, n_boot=500)
    assert out["low"] < 4e-4 < out["high"] and out["pooled_var"] > out["estimate"]
    with pytest.raises(ValueError, match="K >= 2"):
        st.direct_distribution_variance(x[:, :1])


def test_churn_matrix_equals_pairwise_churn():
    rng = np.random.default_rng(12)
    preds = rng.integers(0, 4, size=(7, 50))
    np.testing.assert_array_equal(st.churn_matrix(preds), metrics.pairwise_churn(preds))
    d = st.churn_matrix(np.vstack([preds, preds[:3]]))
    assert st.pair_permutation_test(d, 7, "churn", 99, seed=1) == st.permutation_test(
        preds, preds[:3], n_perm=99, seed=1
    )


def test_jordan_and_direct_agree_in_a_world_with_hard_and_easy_examples():
    # Replica r is right on example x with probability sigmoid(skill_r + ease_x): examples differ in
    # ease (shared by every replica: the finite-sample part both methods must remove) and replicas
    # in skill. The true variance over the distribution is Var_r(E_x sigmoid(skill_r + ease_x)),
    # computed on a large sample of examples. Skill varies little, so the finite-sample part is as
    # large as the truth and an uncorrected estimate lands outside the intervals.
    rng = np.random.default_rng(13)
    r, k, n = 200, 10, 300
    skill = rng.normal(0.0, 0.06, size=(r, 1))

    def correct_on(n_examples):
        ease = rng.normal(2.0, 1.5, n_examples)
        return (rng.random((r, n_examples)) < 1 / (1 + np.exp(-(skill + ease)))).astype(np.int8)

    truth = np.var((1 / (1 + np.exp(-(skill + rng.normal(2.0, 1.5, 200_000))))).mean(axis=1), ddof=1)
    extra = np.stack([correct_on(n).mean(axis=1) for _ in range(k)], axis=1)
    direct = st.direct_distribution_variance(extra, n, n_boot=1000)
    main = correct_on(3000)
    jordan = st.jordan_variance(main, n_boot=1000)
    assert direct["low"] < truth < direct["high"] and jordan.low < truth < jordan.high
    assert direct["pooled_var"] > direct["high"] and np.var(main.mean(axis=1), ddof=1) > jordan.high
    both = st.jordan_vs_direct(main, extra, n_boot=1000)
    assert both["low"] < 0 < both["high"] and both["pvalue"] > 0.05


def test_churn_matrix_of_bit_masks_and_large_ids():
    """Churn only asks whether two predictions are equal: 40-bit masks (a multi-label head) give the same
    matrix as small codes of the same equalities, without a one-hot matrix 2^40 wide."""
    masks = np.array([[2**39, 5, 7, 2**40 - 1], [2**39, 6, 7, 0], [3, 5, 7, 2**40 - 1]], dtype=np.int64)
    codes = np.array([[0, 0, 0, 0], [0, 1, 0, 1], [1, 0, 0, 0]])
    expected = np.array([[0, 2, 1], [2, 0, 3], [1, 3, 0]]) / 4
    assert np.array_equal(st.churn_matrix(masks), expected)
    assert np.array_equal(st.churn_matrix(codes), expected)
