"""Statistics that fit the study's sample sizes: intervals, tests and null models over replicas.

Ground floor: numpy, scipy and pandas only. Every function returns a plain record (a frozen
dataclass or a dict) holding the estimate, its interval, the sample size(s) and the method's
name, so that a finding can quote all four.

Why these methods (issue 9, item 6):

* **SD of a handful of values.** An SD from 10 replicas is known only within a factor of about
  2.7, and the percentile bootstrap of an SD from 10 values covers far less than it claims. The
  chi-square interval is exact for normal data; Bonett's (2006) interval adjusts its width for
  the sample's kurtosis and stays close to nominal when the data are not normal.
* **Churn and L2 over replicas** are means over replica *pairs*; their intervals are BCa
  bootstraps over replicas (Efron 1987: bias-corrected and accelerated, the acceleration from the
  jackknife), which corrects the percentile interval's bias and skew.
* **Differences between two settings** are decided by permutation tests (exact-size Monte Carlo
  p-values, ``(count + 1) / (n_perm + 1)``) and the p-values of one chapter are adjusted together
  with Holm's step-down method.
* **Per-class and subgroup spreads** are compared with a null model of independent examples: if
  every test example were right in each replica independently, at its own observed rate, how
  large would the spread be? Small groups have large spreads by binomial noise alone.

All randomness comes from ``np.random.default_rng(seed)``: a result is a function of its inputs
and its seed, so chapters re-executed on the same runs give byte-identical numbers.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as sps

__all__ = [
    "N_BOOT",
    "N_PERM",
    "N_SIM",
    "Interval",
    "PermutationResult",
    "bca",
    "bootstrap_interval",
    "churn_matrix",
    "clopper_pearson",
    "difference_interval",
    "direct_distribution_variance",
    "holm",
    "independent_null",
    "jordan_variance",
    "jordan_vs_direct",
    "pair_permutation_test",
    "permutation_test",
    "sd_interval",
]

N_BOOT = 2000  # bootstrap resamples per interval
N_PERM = 2000  # permutations per test: p-values resolve down to 1/2001
N_SIM = 2000  # simulated replica sets of the independent-examples null


@dataclasses.dataclass(frozen=True)
class Interval:
    """An estimate with its two-sided interval at ``level``, the sample size and the method."""

    estimate: float
    low: float
    high: float
    n: int
    method: str
    level: float = 0.95

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class PermutationResult:
    """A two-sample permutation test: the observed statistic, its p-value and the group sizes."""

    statistic: str
    observed: float
    pvalue: float
    n_a: int
    n_b: int
    n_perm: int
    method: str = "permutation"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- checks
def _level(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    return float(level)


def _count(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _values(x, name: str = "x", minimum: int = 2) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] < minimum:
        raise ValueError(f"{name} needs at least {minimum} values, got {arr.shape[0]}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains non-finite values")
    return arr


def _pair_matrix(d, name: str = "pairs") -> np.ndarray:
    arr = np.asarray(d, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] < 2:
        raise ValueError(f"{name} must be a square (R, R) matrix with R >= 2, got shape {arr.shape}")
    return arr


# ----------------------------------------------------------------------------- SD intervals
def _sd(x: np.ndarray) -> float:
    """Sample SD (ddof=1), exactly 0 for equal values (a float mean of equal values can round)."""
    return 0.0 if np.all(x == x[0]) else float(np.std(x, ddof=1))


def sd_interval(x, level: float = 0.95, method: str = "chi2") -> Interval:
    """Interval for the standard deviation of the population ``x`` was drawn from.

    ``chi2``: exact for normal data: ``(n-1) s^2 / sigma^2 ~ chi2(n-1)``, so
    ``[s sqrt((n-1)/q_hi), s sqrt((n-1)/q_lo)]`` with ``q`` the chi-square quantiles at
    ``(1 +- level)/2``.
    ``bonett``: Bonett (2006, Comput. Stat. Data Anal. 50, 775-782), robust to non-normal data:
    ``exp(ln(c s^2) +- z se)`` for the variance, square-rooted, with ``c = n/(n - z)``,
    ``se = c sqrt((k - (n-3)/n)/(n-1))`` and the kurtosis estimate
    ``k = n sum (x - m)^4 / (sum (x - mean)^2)^2``, ``m`` the trimmed mean with trim proportion
    ``1/(2 sqrt(n-4))`` (the plain mean for n <= 4).
    Values that are all equal give exactly (0, 0): no spread is observed, and neither method can
    widen a zero. Requires n >= 2 finite values.
    """
    x = _values(x)
    level = _level(level)
    n = x.shape[0]
    s = _sd(x)
    if method not in ("chi2", "bonett"):
        raise ValueError(f"method must be 'chi2' or 'bonett', got {method!r}")
    if s == 0.0:
        return Interval(0.0, 0.0, 0.0, n, method, level)
    alpha = 1.0 - level
    if method == "chi2":
        q_lo, q_hi = sps.chi2.ppf([alpha / 2, 1 - alpha / 2], n - 1)
        return Interval(s, s * math.sqrt((n - 1) / q_hi), s * math.sqrt((n - 1) / q_lo), n, method, level)
    z = float(sps.norm.ppf(1 - alpha / 2))
    m = float(sps.trim_mean(x, 1 / (2 * math.sqrt(n - 4)))) if n > 4 else float(x.mean())
    kurt = n * float(((x - m) ** 4).sum()) / float(((x - x.mean()) ** 2).sum()) ** 2
    c = n / (n - z)
    # The kurtosis estimate minus (n-3)/n is positive for any real sample; the floor guards rounding.
    se = c * math.sqrt(max(kurt - (n - 3) / n, 1e-12) / (n - 1))
    centre = math.log(c * s * s)
    return Interval(s, math.exp((centre - z * se) / 2), math.exp((centre + z * se) / 2), n, method, level)


# ----------------------------------------------------------------------------- BCa bootstrap
def bca(estimate: float, boot: np.ndarray, jack: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The BCa interval (Efron 1987) from the full-sample ``estimate``, the bootstrap replicates
    ``boot`` and the jackknife (leave-one-out) values ``jack``.

    Bias correction ``z0 = Phi^-1(share of boot below the estimate, ties counted half)``;
    acceleration ``a = sum d^3 / (6 (sum d^2)^1.5)`` with ``d = mean(jack) - jack``; the interval
    is the ``Phi(z0 + (z0 + z)/(1 - a (z0 + z)))`` quantiles of ``boot`` for ``z`` the normal
    quantiles at ``(1 -+ level)/2``. A bootstrap distribution without spread gives
    ``(estimate, estimate)``; the bias share is kept inside [1/(2B), 1 - 1/(2B)] so that a
    resample set entirely on one side of the estimate still gives finite quantiles.
    """
    level = _level(level)
    boot = np.asarray(boot, dtype=np.float64)
    boot = boot[np.isfinite(boot)]
    if boot.size == 0 or not math.isfinite(estimate):
        return float("nan"), float("nan")
    if np.all(boot == boot[0]) and boot[0] == estimate:
        return float(estimate), float(estimate)
    b = boot.size
    share = (np.count_nonzero(boot < estimate) + 0.5 * np.count_nonzero(boot == estimate)) / b
    z0 = float(sps.norm.ppf(min(max(share, 0.5 / b), 1 - 0.5 / b)))
    d = np.mean(jack) - np.asarray(jack, dtype=np.float64)
    den = float((d * d).sum()) ** 1.5
    a = float((d**3).sum()) / (6.0 * den) if den > 0 else 0.0
    z = sps.norm.ppf([(1 - level) / 2, (1 + level) / 2])
    q = sps.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
    low, high = np.quantile(boot, q)
    return float(low), float(high)


def _pair_means(d: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mean of ``d`` over the pairs of a resample whose replicas are distinct ORIGINAL replicas.

    ``w`` (B, R) counts how often each replica was drawn. The resample's positions a < b with
    original replicas i != j number ``w_i w_j`` for each ordered (i, j) halved, so the mean is
    ``sum_{i != j} w_i w_j d_ij / sum_{i != j} w_i w_j``. Pairs of a replica with its own copy are
    left out: their distance is exactly zero by construction, not a sample of the distance
    between two independent replicas, and with R = 10 about a tenth of all resampled pairs are
    such copies, which would drag the statistic (and its interval) towards zero. A resample of one
    replica only (probability R^(1-R)) has no pair and gives NaN (dropped by :func:`bca`).
    """
    dz = d.copy()
    np.fill_diagonal(dz, 0.0)
    num = ((w @ dz) * w).sum(axis=1)
    den = w.sum(axis=1) ** 2 - (w * w).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _pair_jack(d: np.ndarray) -> np.ndarray:
    r = d.shape[0]
    keep = ~np.eye(r, dtype=bool)
    return np.array([d[np.ix_(keep[i], keep[i])][np.triu_indices(r - 1, k=1)].mean() for i in range(r)])


def _weights(rng: np.random.Generator, r: int, n_boot: int) -> np.ndarray:
    """(n_boot, r) multiplicities of a with-replacement resample of r replicas."""
    idx = rng.integers(0, r, size=(n_boot, r))
    return np.apply_along_axis(np.bincount, 1, idx, minlength=r).astype(np.float64)


_NAMED = {
    "sd": lambda a: np.std(a, axis=-1, ddof=1),
    "mean": lambda a: np.mean(a, axis=-1),
}


def _vector_stat(statistic) -> Callable[[np.ndarray], np.ndarray]:
    if callable(statistic):
        return statistic
    if statistic not in _NAMED:
        raise ValueError(f"statistic must be one of {sorted(_NAMED)} or a callable, got {statistic!r}")
    return _NAMED[statistic]


def _boot_values(x: np.ndarray, stat, idx: np.ndarray) -> np.ndarray:
    return np.asarray(stat(x[idx]), dtype=np.float64)


def _jack_values(x: np.ndarray, stat) -> np.ndarray:
    r = x.shape[0]
    keep = ~np.eye(r, dtype=bool)
    return np.asarray(stat(np.broadcast_to(x, (r, r))[keep].reshape(r, r - 1)), dtype=np.float64)


def bootstrap_interval(
    x, statistic="sd", *, pairs: bool = False, n_boot: int = N_BOOT, level: float = 0.95, seed: int = 0
) -> Interval:
    """BCa bootstrap interval over replicas, deterministic given ``seed``.

    ``pairs=False``: ``x`` is one value per replica (R,), ``statistic`` ``'sd'`` (ddof=1),
    ``'mean'`` or a vectorised callable mapping an (..., R) array to the statistic over its last
    axis. ``pairs=True``: ``x`` is an (R, R) matrix of pair values (``metrics.pairwise_churn``,
    ``metrics.pairwise_l2``) and the statistic is the mean over pairs of distinct replicas; a
    resample's pairs are those of distinct ORIGINAL replicas (see :func:`_pair_means`). The
    jackknife leaves out one replica (and so all its pairs). Equal values (or a zero pair matrix)
    give exactly (0, 0) spread around the estimate. Requires R >= 2 (3 for pairs' jackknife).
    """
    n_boot = _count(n_boot, "n_boot")
    level = _level(level)
    rng = np.random.default_rng(seed)
    if pairs:
        d = _pair_matrix(x)
        r = d.shape[0]
        estimate = float(d[np.triu_indices(r, k=1)].mean())
        boot = _pair_means(d, _weights(rng, r, n_boot))
        jack = _pair_jack(d) if r >= 3 else np.zeros(1)
        low, high = bca(estimate, boot, jack, level)
        return Interval(estimate, low, high, r, "BCa bootstrap over replicas (pairs of distinct replicas)", level)
    v = _values(x)
    stat = _vector_stat(statistic)
    if np.all(v == v[0]):
        estimate = float(stat(v))
        return Interval(estimate, estimate, estimate, v.shape[0], "BCa bootstrap over replicas", level)
    estimate = float(stat(v))
    idx = rng.integers(0, v.shape[0], size=(n_boot, v.shape[0]))
    low, high = bca(estimate, _boot_values(v, stat, idx), _jack_values(v, stat), level)
    return Interval(estimate, low, high, v.shape[0], "BCa bootstrap over replicas", level)


def difference_interval(
    a, b, statistic="sd", *, pairs: bool = False, n_boot: int = N_BOOT, level: float = 0.95, seed: int = 0
) -> Interval:
    """BCa interval for ``statistic(a) - statistic(b)`` of two independent settings: each resample
    draws replicas within each setting; the jackknife leaves out one replica of either setting.
    ``a``/``b`` as in :func:`bootstrap_interval` (values, or pair matrices with ``pairs=True``).
    ``n`` is ``len(a) + len(b)``."""
    n_boot = _count(n_boot, "n_boot")
    level = _level(level)
    rng = np.random.default_rng(seed)
    if pairs:
        da, db = _pair_matrix(a, "a"), _pair_matrix(b, "b")
        ea, eb = (float(m[np.triu_indices(m.shape[0], k=1)].mean()) for m in (da, db))
        boot = _pair_means(da, _weights(rng, da.shape[0], n_boot)) - _pair_means(db, _weights(rng, db.shape[0], n_boot))
        ja = _pair_jack(da) if da.shape[0] >= 3 else np.full(1, ea)
        jb = _pair_jack(db) if db.shape[0] >= 3 else np.full(1, eb)
        method, n = "BCa bootstrap over replicas (pairs of distinct replicas)", da.shape[0] + db.shape[0]
    else:
        va, vb = _values(a, "a"), _values(b, "b")
        stat = _vector_stat(statistic)
        ea, eb = float(stat(va)), float(stat(vb))
        ia = rng.integers(0, va.shape[0], size=(n_boot, va.shape[0]))
        ib = rng.integers(0, vb.shape[0], size=(n_boot, vb.shape[0]))
        boot = _boot_values(va, stat, ia) - _boot_values(vb, stat, ib)
        ja, jb = _jack_values(va, stat), _jack_values(vb, stat)
        method, n = "BCa bootstrap over replicas", va.shape[0] + vb.shape[0]
    estimate = ea - eb
    jack = np.concatenate([ja - eb, ea - jb])
    low, high = bca(estimate, boot, jack, level)
    return Interval(estimate, low, high, n, method, level)


# ----------------------------------------------------------------------------- permutation tests
def churn_matrix(preds) -> np.ndarray:
    """(R, R) share of examples on which two replicas' predictions differ, from a one-hot Gram
    matrix (agreements of rows i and j = sum over classes of both predicting it): equal to
    ``metrics.pairwise_churn`` (tested), as one matrix product instead of R passes over (R, N)."""
    preds = np.asarray(preds, dtype=np.int64)
    r, n = preds.shape
    if preds.size and (preds.min() < 0 or preds.max() >= r):
        # Only equality matters: re-code each example's values to 0..r-1 (ranks of its distinct values), so
        # that bit masks (a multi-label head's 2^40 values) or large ids do not size the one-hot matrix.
        order = np.argsort(preds, axis=0, kind="stable")
        ordered = np.take_along_axis(preds, order, axis=0)
        codes = np.zeros_like(preds)
        codes[1:] = np.cumsum(ordered[1:] != ordered[:-1], axis=0)
        preds = np.empty_like(preds)
        np.put_along_axis(preds, order, codes, axis=0)
    c = int(preds.max()) + 1 if preds.size else 1
    onehot = np.zeros((r, n * c), dtype=np.float32)
    onehot[np.repeat(np.arange(r), n), (np.arange(n) * c + preds).ravel()] = 1.0
    # float32 sums of 0/1 are exact up to 2^24 examples
    agree = onehot @ onehot.T
    return (n - agree.astype(np.float64)) / n


def _perm_masks(rng: np.random.Generator, n_a: int, n: int, n_perm: int) -> np.ndarray:
    """(n_perm, n) boolean membership of group a in random relabellings of the pooled sample."""
    order = np.argsort(rng.random((n_perm, n)), axis=1)
    masks = np.zeros((n_perm, n), dtype=bool)
    np.put_along_axis(masks, order[:, :n_a], True, axis=1)
    return masks


def _group_pair_means(d: np.ndarray, masks: np.ndarray) -> np.ndarray:
    m = masks.astype(np.float64)
    k = m.sum(axis=1)
    return ((m @ d) * m).sum(axis=1) / (k * (k - 1))


def _sd_stat(kind: str, sa: np.ndarray, sb: np.ndarray) -> np.ndarray:
    if kind == "sd_difference":
        return sa - sb
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(sa) - np.log(sb)


def permutation_test(a, b, statistic: str = "churn", n_perm: int = N_PERM, seed: int = 0) -> PermutationResult:
    """Two-sided permutation test that settings ``a`` and ``b`` come from one distribution.

    ``statistic``:
    * ``'churn'``: ``a``, ``b`` are (R_a, N), (R_b, N) prediction matrices on the same examples;
      the statistic is mean pair churn within a minus within b. A permutation pools the replicas'
      prediction rows, reassigns R_a of them to a, and recomputes each group's mean pair churn.
    * ``'sd_log_ratio'`` / ``'sd_difference'``: ``a``, ``b`` are per-replica values (e.g.
      accuracies); the statistic is ``log(sd_a / sd_b)`` or ``sd_a - sd_b``. Each group is
      centred on its own mean before pooling, so a difference in means does not pass for a
      difference in spread.
    p-value ``(1 + #{|T_perm| >= |T_obs|}) / (n_perm + 1)`` (valid at any n_perm; a tolerance of
    1e-12 relative keeps float ties ties). Identical groups give p = 1; infinite statistics (one
    SD exactly 0) compare as infinities. Deterministic given ``seed``.
    """
    n_perm = _count(n_perm, "n_perm")
    rng = np.random.default_rng(seed)
    if statistic == "churn":
        pa, pb = np.asarray(a), np.asarray(b)
        if pa.ndim != 2 or pb.ndim != 2 or pa.shape[1] != pb.shape[1]:
            raise ValueError(f"churn needs (R, N) matrices on the same N examples, got {pa.shape} and {pb.shape}")
        if pa.shape[0] < 2 or pb.shape[0] < 2:
            raise ValueError(f"churn needs at least 2 replicas per group, got {pa.shape[0]} and {pb.shape[0]}")
        return pair_permutation_test(churn_matrix(np.vstack([pa, pb])), pa.shape[0], "churn", n_perm, seed)
    elif statistic in ("sd_log_ratio", "sd_difference"):
        va, vb = _values(a, "a"), _values(b, "b")
        n_a, n_b = va.shape[0], vb.shape[0]
        pooled = np.concatenate([va - va.mean(), vb - vb.mean()])
        observed = float(_sd_stat(statistic, np.array([_sd(va)]), np.array([_sd(vb)]))[0])
        masks = _perm_masks(rng, n_a, n_a + n_b, n_perm)
        xa = pooled[np.argsort(~masks, axis=1, kind="stable")[:, :n_a]]
        xb = pooled[np.argsort(masks, axis=1, kind="stable")[:, :n_b]]
        perm = _sd_stat(statistic, np.std(xa, axis=1, ddof=1), np.std(xb, axis=1, ddof=1))
    else:
        raise ValueError(f"statistic must be 'churn', 'sd_log_ratio' or 'sd_difference', got {statistic!r}")
    return _permutation_result(statistic, observed, perm, n_a, n_b, n_perm)


def pair_permutation_test(d, n_a: int, statistic: str = "pairs", n_perm: int = N_PERM, seed: int = 0):
    """The permutation test of :func:`permutation_test` for a pairwise statistic, from the pooled
    (R_a + R_b, R_a + R_b) pair matrix ``d`` whose first ``n_a`` rows are setting a: the mean over
    pairs within a minus within b, recomputed for random relabellings of the pooled replicas."""
    d = _pair_matrix(d)
    n_perm = _count(n_perm, "n_perm")
    total = d.shape[0]
    if not 2 <= n_a <= total - 2:
        raise ValueError(f"need at least 2 replicas per group, got {n_a} and {total - n_a}")
    first = np.arange(total) < n_a
    observed = float(_group_pair_means(d, first[None])[0] - _group_pair_means(d, ~first[None])[0])
    masks = _perm_masks(np.random.default_rng(seed), n_a, total, n_perm)
    perm = _group_pair_means(d, masks) - _group_pair_means(d, ~masks)
    return _permutation_result(statistic, observed, perm, n_a, total - n_a, n_perm)


def _permutation_result(statistic, observed, perm, n_a, n_b, n_perm) -> PermutationResult:
    """The two-sided p-value ``(1 + #{|T_perm| >= |T_obs|}) / (n_perm + 1)``."""
    if math.isnan(observed):  # both spreads exactly zero: nothing tells the groups apart
        return PermutationResult(statistic, observed, 1.0, n_a, n_b, n_perm)
    t_obs = abs(observed)
    t = np.abs(perm)
    extreme = (t >= t_obs) if math.isinf(t_obs) else (t >= t_obs * (1 - 1e-12) - 1e-15)
    pvalue = (1 + int(np.count_nonzero(extreme))) / (n_perm + 1)
    return PermutationResult(statistic, observed, pvalue, n_a, n_b, n_perm)


# ----------------------------------------------------------------------------- multiple comparisons
def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input's order: the i-th smallest of m p-values
    becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``. NaN p-values stay NaN and do not count in
    m. Controls the family-wise error rate of one chapter's comparisons at any dependence."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def clopper_pearson(k: int, n: int, level: float = 0.95) -> Interval:
    """Exact (Clopper-Pearson) interval for a binomial proportion k/n: the beta quantiles
    ``B((1-level)/2; k, n-k+1)`` and ``B((1+level)/2; k+1, n-k)``, 0 when k = 0 and 1 when k = n."""
    n = _count(n, "n")
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or not 0 <= k <= n:
        raise ValueError(f"k must be an int in [0, n={n}], got {k!r}")
    level = _level(level)
    alpha = 1 - level
    low = 0.0 if k == 0 else float(sps.beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(sps.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return Interval(k / n, low, high, n, "Clopper-Pearson", level)


# ----------------------------------------------------------------------------- independent-examples null
def _poisson_binomial(p: np.ndarray) -> np.ndarray:
    """pmf of the number of successes among independent Bernoulli(p_i): the convolution DP."""
    pmf = np.zeros(p.size + 1)
    pmf[0] = 1.0
    for k, q in enumerate(p, start=1):
        pmf[1 : k + 1] = pmf[1 : k + 1] * (1 - q) + pmf[:k] * q
        pmf[0] *= 1 - q
    return pmf


def _group_counts(correct: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """(R, G) number of correct examples per replica and group."""
    r = correct.shape[0]
    cells = (np.arange(r)[:, None] * n_groups + codes[None, :]).ravel()
    return np.bincount(cells, weights=correct.ravel(), minlength=r * n_groups).reshape(r, n_groups)


def _spreads(counts: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SD over replicas (axis -2) of each group's accuracy, and of the top-1 accuracy (all groups)."""
    sd_groups = np.std(counts / sizes, axis=-2, ddof=1)
    sd_top = np.std(counts.sum(axis=-1) / sizes.sum(), axis=-1, ddof=1)
    return sd_groups, sd_top


def _summary(kind: str, sd_groups: np.ndarray, sd_top: np.ndarray, rare: np.ndarray | None) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "max":
            return sd_groups.max(axis=-1)
        if kind == "max_ratio":
            return sd_groups.max(axis=-1) / sd_top
        if kind == "mean":
            return sd_groups.mean(axis=-1)
        if kind == "rare_common_ratio":
            return sd_groups[..., rare].mean(axis=-1) / sd_groups[..., ~rare].mean(axis=-1)
    raise ValueError(f"statistic must be 'max', 'max_ratio', 'mean' or 'rare_common_ratio', got {kind!r}")


def _quantiles(a: np.ndarray, q, axis=None) -> np.ndarray:
    """NaN-skipping quantiles that read NaN, silently, where everything is NaN (a statistic that is
    0/0 in every simulation) and tolerate infinities (a simulated top-1 accuracy that does not
    move gives an infinite ratio: larger than any observation; quantiles between infinities are
    inf or NaN)."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanquantile(a, q, axis=axis)


def independent_null(
    correct,
    groups,
    statistic: str = "max_ratio",
    *,
    rare=None,
    n_sim: int = N_SIM,
    n_boot: int = N_BOOT,
    level: float = 0.95,
    seed: int = 0,
) -> dict:
    """How large a per-group spread is when every example is right independently at its own rate.

    ``correct`` (R, N) 0/1: replica r right on example n. ``groups`` (N,): each example's group
    (class, or (label, attribute) subgroup code). The spread of a group is the SD over replicas
    (ddof=1) of the replica's accuracy on the group's examples, as ``analysis.per_class_spread``
    and ``analysis.subgroups`` compute it (a subgroup's recall is its accuracy; std(FNR) equals
    std(recall)). The null: example n right in each replica independently with probability
    ``p_n`` = its observed share of replicas right. Examples with p_n in {0, 1} never move; a
    group's count of right examples is Poisson-binomial over its other examples, drawn exactly
    from its pmf, ``n_sim`` sets of R replicas.
    ``statistic`` summarises the groups' spreads: ``'max'`` (largest group SD), ``'max_ratio'``
    (that over the SD of top-1 accuracy, the chapters' ratio_max), ``'mean'`` or
    ``'rare_common_ratio'`` (mean over the ``rare`` groups over the mean over the others; ``rare``
    a boolean per group in sorted group order).
    Returns ``observed``, ``null_median``, ``null_low``/``null_high`` (central ``level`` range),
    ``excess`` = observed - null median with ``excess_low``/``excess_high`` (the BCa interval of the
    observed statistic over replicas, minus the null median, which is held fixed: its Monte Carlo
    error is small beside the replicas'), ``ratio`` = observed / null median with its interval
    likewise, ``pvalue`` one-sided ``(1 + #{null >= observed}) / (n_sim + 1)`` (NaN when the
    observed statistic is undefined: no replica differs from another), ``n_replicas``,
    ``n_examples``, and ``groups``: per group its value, size, observed SD and null median/range.
    """
    c = np.asarray(correct)
    if c.ndim != 2 or c.shape[0] < 3:
        raise ValueError(f"correct must be an (R, N) 0/1 matrix with R >= 3, got shape {c.shape}")
    if not np.isin(c, (0, 1)).all():
        raise ValueError("correct must hold only 0 and 1")
    g = np.asarray(groups)
    if g.shape != (c.shape[1],):
        raise ValueError(f"groups must have shape ({c.shape[1]},), got {g.shape}")
    n_sim, n_boot = _count(n_sim, "n_sim"), _count(n_boot, "n_boot")
    level = _level(level)
    values, codes = np.unique(g, return_inverse=True)
    codes = codes.reshape(-1)
    n_groups = values.size
    rare_mask = None
    if statistic == "rare_common_ratio":
        rare_mask = np.asarray(rare, dtype=bool) if rare is not None else None
        if rare_mask is None or rare_mask.shape != (n_groups,) or rare_mask.all() or not rare_mask.any():
            raise ValueError(f"rare_common_ratio needs `rare`, a boolean per group ({n_groups}) with both kinds")
    r = c.shape[0]
    c = c.astype(np.float64)
    sizes = np.bincount(codes, minlength=n_groups).astype(np.float64)
    counts = _group_counts(c, codes, n_groups)
    sd_groups, sd_top = _spreads(counts, sizes)
    observed = float(_summary(statistic, sd_groups, sd_top, rare_mask))

    rng = np.random.default_rng(seed)
    p = c.mean(axis=0)
    sim = np.empty((n_sim, r, n_groups))
    for k in range(n_groups):
        pk = p[codes == k]
        fixed = float((pk == 1).sum())  # always right: never moves
        moving = pk[(pk > 0) & (pk < 1)]
        pmf = _poisson_binomial(moving)
        cdf = np.cumsum(pmf)
        draws = np.searchsorted(cdf, rng.random((n_sim, r)) * cdf[-1], side="right")
        sim[:, :, k] = fixed + np.minimum(draws, moving.size)
    null_groups, null_top = _spreads(sim, sizes)
    null = _summary(statistic, null_groups, null_top, rare_mask)
    alpha = (1 - level) / 2
    lo, med, hi = (float(v) for v in _quantiles(null, [alpha, 0.5, 1 - alpha]))
    valid = null[~np.isnan(null)]
    if math.isnan(observed):  # nothing moves (0 / 0): there is no spread to compare with the null
        pvalue = float("nan")
    else:
        pvalue = (1 + int(np.count_nonzero(valid >= observed * (1 - 1e-12)))) / (valid.size + 1)

    # Interval of the observed statistic: BCa over replicas on the (R, G) counts.
    idx = rng.integers(0, r, size=(n_boot, r))
    boot = _summary(statistic, *_spreads(counts[idx], sizes), rare_mask)
    keep = ~np.eye(r, dtype=bool)
    jack_counts = np.broadcast_to(counts, (r, r, n_groups))[keep].reshape(r, r - 1, n_groups)
    jack = _summary(statistic, *_spreads(jack_counts, sizes), rare_mask)
    jack = jack[np.isfinite(jack)]
    o_lo, o_hi = bca(observed, boot, jack if jack.size else np.zeros(1), level)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = observed / med if med > 0 else float("nan")
        r_lo, r_hi = (o_lo / med, o_hi / med) if med > 0 else (float("nan"), float("nan"))
    return {
        "statistic": statistic,
        "observed": observed,
        "null_median": med,
        "null_low": lo,
        "null_high": hi,
        "excess": observed - med,
        "excess_low": o_lo - med,
        "excess_high": o_hi - med,
        "ratio": ratio,
        "ratio_low": r_lo,
        "ratio_high": r_hi,
        "pvalue": pvalue,
        "n_replicas": int(r),
        "n_examples": int(c.shape[1]),
        "n_sim": n_sim,
        "method": "independent-examples null (Poisson-binomial per group)",
        "groups": {
            "group": values,
            "n": sizes.astype(np.int64),
            "sd": sd_groups,
            "null_median": _quantiles(null_groups, 0.5, axis=0),
            "null_low": _quantiles(null_groups, alpha, axis=0),
            "null_high": _quantiles(null_groups, 1 - alpha, axis=0),
        },
    }


# ----------------------------------------------------------------------------- variance over the distribution
def _jordan(w: np.ndarray, acc: np.ndarray, gram: np.ndarray, n: int) -> np.ndarray:
    """Jordan's distribution variance for replica multiplicities ``w`` (B, R), vectorised.

    observed = the var (ddof=1) of the R' = sum(w) drawn accuracies; with
    ``p_n = sum_r w_r C_rn / R'``: ``sum_n p_n = N mean(acc)`` and ``sum_n p_n^2 = w^T G w / R'^2``
    for the co-correctness Gram matrix ``G = C C^T`` (R, R), so no (B, N) matrix is formed.
    """
    rr = w.sum(axis=1)
    mean = (w @ acc) / rr
    observed = (w @ (acc * acc) - rr * mean * mean) / (rr - 1)
    sum_p = n * mean
    sum_p2 = np.einsum("bi,ij,bj->b", w, gram, w) / (rr * rr)
    predicted = (sum_p - sum_p2) * rr / (rr - 1) / (n * n)
    return n / (n - 1) * (observed - predicted)


def jordan_variance(correct, *, n_boot: int = N_BOOT, level: float = 0.95, seed: int = 0) -> Interval:
    """Jordan's (ICLR 2024) estimate of the variance of accuracy over the data distribution from
    ONE test set of N examples, with a BCa interval over replicas.

    ``N/(N-1) (var_r(acc_r) - sum_n p_n (1 - p_n) R/(R-1) / N^2)`` (see
    ``metrics.distribution_variance``); it can be negative (its noise is larger than the
    quantity), and is reported as computed. Replicas right on the same examples give exactly 0.
    ``correct`` (R, N) 0/1, R >= 3.
    """
    c = np.asarray(correct, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] < 3 or c.shape[1] < 2:
        raise ValueError(f"correct must be (R, N) with R >= 3 and N >= 2, got shape {c.shape}")
    r, n = c.shape
    if np.all(c == c[0]):  # bit-identical replicas: nothing varies, exactly (rounding would leave ~1e-16)
        return Interval(0.0, 0.0, 0.0, r, "Jordan (test-set split), BCa over replicas", level)
    acc = c.mean(axis=1)
    gram = c @ c.T
    estimate = float(_jordan(np.ones((1, r)), acc, gram, n)[0])
    rng = np.random.default_rng(seed)
    boot = _jordan(_weights(rng, r, _count(n_boot, "n_boot")), acc, gram, n)
    jack = _jordan(1.0 - np.eye(r), acc, gram, n)
    low, high = bca(estimate, boot, jack, level)
    return Interval(estimate, low, high, r, "Jordan (test-set split), BCa over replicas", level)


def _direct(extra: np.ndarray) -> np.ndarray:
    """Mean over pairs of distinct test sets k != l of the across-replica covariance of the
    per-set accuracies: (K^2 var(pooled) - sum_k var_k) / (K (K-1)), for (..., R, K)."""
    k = extra.shape[-1]
    pooled = extra.mean(axis=-1)
    var_pooled = np.var(pooled, axis=-1, ddof=1)
    var_sets = np.var(extra, axis=-2, ddof=1).sum(axis=-1)
    return (k * k * var_pooled - var_sets) / (k * (k - 1))


def direct_distribution_variance(
    extra_accuracy, extra_n: int | None = None, *, n_boot: int = N_BOOT, level: float = 0.95, seed: int = 0
) -> dict:
    """Variance of accuracy over the data distribution, MEASURED on K independent extra test sets.

    ``extra_accuracy`` (R, K): replica r's accuracy on extra test set k (``Runs.replicas``'
    ``extra_accuracy`` lists stacked), each set ``extra_n`` examples. The variance across replicas
    of the pooled accuracy (all K sets together) is the distribution variance plus a finite-sample
    term ``E_x[p(x)(1-p(x))]/(K extra_n)`` and the examples' shared covariance. Two DIFFERENT sets
    share no example, so the across-replica covariance of accuracies on sets k and l != k has
    expectation exactly the distribution variance: the estimate is the mean of those covariances,
    ``(K^2 var(pooled) - sum_k var_k) / (K (K-1))``, i.e. the pooled variance with its own
    finite-sample (same-set) part removed. Unbiased; can be negative by noise.
    Returns ``estimate``, ``low``/``high`` (BCa over replicas), ``pooled_var`` (uncorrected),
    ``finite_sample_var`` = pooled_var - estimate, ``n_replicas``, ``n_sets``, ``n_per_set``,
    ``method``. Requires R >= 3 and K >= 2.
    """
    x = np.asarray(extra_accuracy, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 3 or x.shape[1] < 2:
        raise ValueError(f"extra_accuracy must be (R, K) with R >= 3 replicas and K >= 2 sets, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("extra_accuracy contains non-finite values")
    r, k = x.shape
    estimate = float(_direct(x))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, r, size=(_count(n_boot, "n_boot"), r))
    keep = ~np.eye(r, dtype=bool)
    jack = _direct(np.broadcast_to(x, (r, r, k))[keep].reshape(r, r - 1, k))
    low, high = bca(estimate, _direct(x[idx]), jack, level)
    pooled = float(np.var(x.mean(axis=1), ddof=1))
    return {
        "estimate": estimate,
        "low": low,
        "high": high,
        "pooled_var": pooled,
        "finite_sample_var": pooled - estimate,
        "n_replicas": int(r),
        "n_sets": int(k),
        "n_per_set": None if extra_n is None else int(extra_n),
        "level": level,
        "method": "direct: covariance across replicas of accuracies on distinct extra test sets, BCa over replicas",
    }


def jordan_vs_direct(correct, extra_accuracy, *, n_boot: int = N_BOOT, level: float = 0.95, seed: int = 0) -> dict:
    """Jordan's estimate (main test set, ``correct`` (R, N)) minus the direct measurement (extra
    test sets, ``extra_accuracy`` (R, K)) on the SAME replicas: a paired bootstrap resamples
    replicas once for both. Returns ``difference`` with its BCa ``low``/``high`` and a two-sided
    bootstrap p-value ``min(1, 2 min(#{boot <= 0} + 1, #{boot >= 0} + 1) / (B + 1))`` for "the two
    estimate the same variance", ``n_replicas``, ``method``."""
    c = np.asarray(correct, dtype=np.float64)
    x = np.asarray(extra_accuracy, dtype=np.float64)
    if c.ndim != 2 or x.ndim != 2 or c.shape[0] != x.shape[0] or c.shape[0] < 3 or x.shape[1] < 2:
        raise ValueError(f"need (R, N) and (R, K) on the same R >= 3 replicas, K >= 2, got {c.shape} and {x.shape}")
    r, n = c.shape
    acc, gram = c.mean(axis=1), c @ c.T
    estimate = float(_jordan(np.ones((1, r)), acc, gram, n)[0] - _direct(x))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, r, size=(_count(n_boot, "n_boot"), r))
    w = np.apply_along_axis(np.bincount, 1, idx, minlength=r).astype(np.float64)
    boot = _jordan(w, acc, gram, n) - _direct(x[idx])
    keep = ~np.eye(r, dtype=bool)
    jack = _jordan(1.0 - np.eye(r), acc, gram, n) - _direct(
        np.broadcast_to(x, (r,) + x.shape)[keep].reshape(r, r - 1, -1)
    )
    low, high = bca(estimate, boot, jack, level)
    b = boot.size
    tail = min(int(np.count_nonzero(boot <= 0)), int(np.count_nonzero(boot >= 0)))
    return {
        "difference": estimate,
        "low": low,
        "high": high,
        "pvalue": min(1.0, 2 * (tail + 1) / (b + 1)),
        "n_replicas": int(r),
        "level": level,
        "method": "paired bootstrap over replicas (BCa interval)",
    }
