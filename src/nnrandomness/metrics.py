"""Run-to-run variability metrics over replica predictions and weights.

Conventions used throughout:

* ``preds`` is an integer array of shape ``(R, N)``: row ``r`` holds replica
  ``r``'s predicted class for each of the same ``N`` test examples.
* ``labels`` is an integer array of shape ``(N,)``.
* Class indices are non-negative integers.
* Standard deviations and variances across replicas use ``ddof=1``.
* Bad shapes or values raise ``ValueError`` naming the offending value.

Reference: Zhuang et al., "Randomness in Neural Network Training:
Characterizing the Impact of Tooling", MLSys 2022.  Where the paper's released
code differs from the definition used here, the docstring says so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "accuracy",
    "accuracy_summary",
    "churn",
    "pairwise_churn",
    "churn_decomposition",
    "churn_vs_reference",
    "is_buffer_name",
    "pairwise_l2",
    "mean_pairwise_l2",
    "per_class_accuracy",
    "per_class_summary",
    "subgroup_rates",
    "subgroup_summary",
    "per_example_instability",
    "distribution_variance",
    "bootstrap_ci",
    "spread_test",
    "pooled_rates",
    "attribute_churn",
]

# Last dotted component of the BatchNorm buffers PyTorch stores in a
# state_dict next to the learnable parameters.
_BN_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


# ---------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------


def _as_class_array(x, name: str, ndim: int) -> np.ndarray:
    """Return ``x`` as an integer array of ``ndim`` dims with entries >= 0."""
    arr = np.asarray(x)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    # Booleans are integers to numpy but almost surely a caller mistake here.
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} contains negative class index {arr.min()}")
    return arr


def _check_preds(preds) -> np.ndarray:
    p = _as_class_array(preds, "preds", 2)
    r, n = p.shape
    if r < 1:
        raise ValueError(f"preds needs at least 1 replica, got R={r}")
    if n < 1:
        raise ValueError(f"preds needs at least 1 example, got N={n}")
    return p


def _check_preds_labels(preds, labels) -> tuple[np.ndarray, np.ndarray]:
    p = _check_preds(preds)
    y = _as_class_array(labels, "labels", 1)
    if y.shape[0] != p.shape[1]:
        raise ValueError(f"labels has length {y.shape[0]} but preds has N={p.shape[1]} examples")
    return p, y


def _require_pairs(r: int) -> None:
    if r < 2:
        raise ValueError(f"need at least 2 replicas to form pairs, got R={r}")


def _class_counts(preds: np.ndarray) -> np.ndarray:
    """(N, C) counts: entry [n, c] = number of replicas predicting c on example n."""
    r, n = preds.shape
    c = int(preds.max()) + 1
    if c > preds.size:
        # Sparse class ids (a multi-label replica's 40-bit masks, store.pack_bits): the columns of the
        # values that occur instead, so memory stays N * (at most R * N). Every caller reads counts
        # per example only (sums of squares, maxima, nonzeros), never which class a column is.
        _, codes = np.unique(preds, return_inverse=True)
        preds, c = codes.reshape(r, n), int(codes.max()) + 1
    # One bincount over flat (example, class) cells instead of a loop over
    # classes: O(R*N + N*C) time, N*C memory.
    cells = np.arange(n, dtype=np.int64) * c + preds
    return np.bincount(cells.ravel(), minlength=n * c).reshape(n, c)


def _sample_std(x: np.ndarray) -> float:
    """Sample std (ddof=1); nan for fewer than 2 values (no warning); exactly 0 for equal values.

    The float mean of R equal values can round (0.1 * 3 / 3 != 0.1), which would report a
    spread of ~1e-17 for bit-identical replicas; identical values mean no spread at all.
    """
    if x.shape[0] < 2:
        return float("nan")
    if np.all(x == x[0]):
        return 0.0
    return float(np.std(x, ddof=1))


# ---------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------


def accuracy(preds, labels) -> np.ndarray:
    """Per-replica accuracy: ``acc[r] = mean_n [preds[r, n] == labels[n]]``, shape (R,)."""
    p, y = _check_preds_labels(preds, labels)
    return (p == y).mean(axis=1)


def accuracy_summary(preds, labels) -> dict:
    """Summary of per-replica accuracy across replicas.

    Keys: ``mean``, ``std`` (sample std, ddof=1; nan when R == 1), ``min``,
    ``max``, ``n_replicas``.
    """
    acc = accuracy(preds, labels)
    return {
        "mean": float(acc.mean()),
        "std": _sample_std(acc),
        "min": float(acc.min()),
        "max": float(acc.max()),
        "n_replicas": int(acc.shape[0]),
    }


# ---------------------------------------------------------------------------
# Churn
# ---------------------------------------------------------------------------


def churn(preds) -> float:
    """Mean over replica pairs i<j of the fraction of examples where preds differ.

    Computed from per-example class counts ``n_c`` without a loop over pairs:
    disagreeing pairs on an example = ``(R^2 - sum_c n_c^2) / 2``, and
    ``churn = sum_n (R^2 - sum_c n_c^2) / (N * R * (R-1))``.
    Exactly 0 iff all replicas agree everywhere.  Requires R >= 2.
    Note: the paper's released code returned agreement (1 - churn) by mistake.
    """
    p = _check_preds(preds)
    r, n = p.shape
    _require_pairs(r)
    counts = _class_counts(p)
    # Integer arithmetic up to the final division keeps "no disagreement"
    # exactly 0.0.
    disagree_x2 = int((r * r - (counts * counts).sum(axis=1)).sum())
    return disagree_x2 / (n * r * (r - 1))


def pairwise_churn(preds) -> np.ndarray:
    """(R, R) matrix ``D[i, j] = mean_n [preds[i, n] != preds[j, n]]``; zero diagonal.

    Exactly symmetric.  O(R^2 * N): meant for tests and small heatmaps; use
    ``churn`` for the mean.  Note: the paper's released code returned
    agreement (1 - churn) by mistake.
    """
    p = _check_preds(preds)
    r, n = p.shape
    out = np.empty((r, r), dtype=np.float64)
    for i in range(r):
        # Integer counts divided by N give bitwise-identical D[i,j] and D[j,i].
        out[i] = np.count_nonzero(p[i] != p, axis=1) / n
    return out


def churn_decomposition(preds, labels) -> dict:
    """Split churn over unordered pairs i<j by correctness of the pair.

    With ``k_n`` replicas correct on example n and class counts ``n_c``,
    per example: differing pairs ``= (R^2 - sum_c n_c^2)/2``; pairs with
    exactly one correct ``= k_n (R - k_n)`` (these always differ); differing
    pairs with both wrong = the rest.  Each is divided by ``N * R(R-1)/2``.
    Keys: ``churn``, ``one_correct``, ``both_wrong`` (the last two sum to churn).
    Requires R >= 2.
    """
    p, y = _check_preds_labels(preds, labels)
    r, n = p.shape
    _require_pairs(r)
    counts = _class_counts(p)
    differ = (r * r - (counts * counts).sum(axis=1)) // 2  # exact: R^2 - S is even
    k = (p == y).sum(axis=0)
    one = k * (r - k)
    denom = n * r * (r - 1) / 2
    return {
        "churn": float(differ.sum() / denom),
        "one_correct": float(one.sum() / denom),
        "both_wrong": float((differ - one).sum() / denom),
    }


def churn_vs_reference(preds, labels, reference: int = 0) -> dict:
    """Ordered churn of every other replica against ``preds[reference]``.

    For each other replica j, as fractions of the N examples:
    ``correct_to_wrong`` = reference correct and j wrong;
    ``wrong_to_correct`` = reference wrong and j correct;
    ``wrong_to_other_wrong`` = both wrong with different predictions;
    ``churn`` = their sum = fraction where j differs from the reference.
    Returns those four as arrays of shape (R-1,), aligned with ``replicas``
    (the other replicas' indices, ascending), their means as ``mean_<key>``,
    and ``reference``.  Requires R >= 2 and 0 <= reference < R.
    """
    p, y = _check_preds_labels(preds, labels)
    r, _ = p.shape
    _require_pairs(r)
    if isinstance(reference, (bool, np.bool_)) or not isinstance(reference, (int, np.integer)):
        raise ValueError(f"reference must be an int replica index, got {reference!r}")
    if not 0 <= reference < r:
        raise ValueError(f"reference={reference} is out of range for R={r} replicas")
    others = np.array([j for j in range(r) if j != reference], dtype=np.int64)
    ref_ok = p[reference] == y
    oth = p[others]
    oth_ok = oth == y
    parts = {
        "correct_to_wrong": (ref_ok & ~oth_ok).mean(axis=1),
        "wrong_to_correct": (~ref_ok & oth_ok).mean(axis=1),
        "wrong_to_other_wrong": (~ref_ok & ~oth_ok & (oth != p[reference])).mean(axis=1),
    }
    parts["churn"] = (oth != p[reference]).mean(axis=1)
    out: dict = {"reference": int(reference), "replicas": others}
    out.update(parts)
    out.update({f"mean_{key}": float(v.mean()) for key, v in parts.items()})
    return out


# ---------------------------------------------------------------------------
# Weight-space distance
# ---------------------------------------------------------------------------


def is_buffer_name(name: str) -> bool:
    """True if the last dotted component of ``name`` is ``running_mean``,
    ``running_var`` or ``num_batches_tracked`` (BatchNorm buffers)."""
    return name.rsplit(".", 1)[-1] in _BN_BUFFER_SUFFIXES


def _default_include(name: str) -> bool:
    return not is_buffer_name(name)


def _flatten_replicas(
    weights: Sequence[Mapping[str, np.ndarray]],
    include: Callable[[str], bool] | None,
) -> np.ndarray:
    """(R, P) float64 matrix: each replica's selected arrays, sorted key order."""
    if isinstance(weights, Mapping):
        raise ValueError("weights must be a list of R dicts, got a single dict")
    weights = list(weights)
    if len(weights) < 1:
        raise ValueError(f"weights needs at least 1 replica, got R={len(weights)}")
    include = _default_include if include is None else include
    keys = set(weights[0])
    for r, w in enumerate(weights[1:], start=1):
        diff = keys.symmetric_difference(w)
        if diff:
            key = sorted(diff)[0]
            where = "replica 0" if key in keys else f"replica {r}"
            raise ValueError(f"weights[{r}] key set differs from weights[0]: {key!r} only in {where}")
    shapes = {k: np.shape(weights[0][k]) for k in keys}
    for r, w in enumerate(weights):
        for k in keys:
            if np.shape(w[k]) != shapes[k]:
                raise ValueError(f"weights[{r}][{k!r}] has shape {np.shape(w[k])}, weights[0] has {shapes[k]}")
    selected = sorted(k for k in keys if include(k))
    if not selected:
        raise ValueError("include selected no parameters")
    sizes = [int(np.prod(shapes[k], dtype=np.int64)) for k in selected]
    x = np.empty((len(weights), sum(sizes)), dtype=np.float64)
    for r, w in enumerate(weights):
        off = 0
        for k, size in zip(selected, sizes):
            v = np.asarray(w[k], dtype=np.float64).ravel()
            # One diverged replica must not silently poison every distance.
            if not np.isfinite(v).all():
                raise ValueError(f"weights[{r}][{k!r}] contains non-finite values")
            x[r, off : off + size] = v
            off += size
    return x


def pairwise_l2(weights, include=None) -> np.ndarray:
    """(R, R) Euclidean distances between flattened replica weights.

    Each replica is the float64 concatenation of its arrays in sorted key
    order, restricted to names with ``include(name)`` true.  The default
    ``include`` excludes BatchNorm buffers (``is_buffer_name``); callers who
    want them counted pass e.g. ``include=lambda name: True``.
    Distances via the Gram matrix ``G`` of the (mean-centred) rows:
    ``D_ij = sqrt(max(G_ii + G_jj - 2 G_ij, 0))``.  Result is exactly
    symmetric with exact zeros on the diagonal and wherever two replicas'
    selected weights are bitwise equal.  Mismatched key sets or shapes, or
    non-finite values, raise ValueError naming the key.
    """
    x = _flatten_replicas(weights, include)
    r = x.shape[0]
    # Distances are translation invariant; centring shrinks the norms towards
    # the spread between replicas, which limits cancellation in G_ii+G_jj-2G_ij
    # when replicas are close together.
    xc = x - x.mean(axis=0)
    g = xc @ xc.T
    sq = np.diag(g)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * g, 0.0)
    d = np.sqrt(d2)
    # BLAS need not return an exactly symmetric G; mirror the upper triangle.
    iu = np.triu_indices(r, k=1)
    d[(iu[1], iu[0])] = d[iu]
    np.fill_diagonal(d, 0.0)
    # Rounding in G can leave ~1e-8 for identical replicas; the guarantee is
    # exact zero, so check bitwise equality (grouped by byte content, O(R*P)).
    groups: dict[bytes, list[int]] = {}
    for i in range(r):
        groups.setdefault(x[i].tobytes(), []).append(i)
    for members in groups.values():
        if len(members) > 1:
            d[np.ix_(members, members)] = 0.0
    return d


def mean_pairwise_l2(weights, include=None) -> float:
    """Mean of ``pairwise_l2(weights, include)`` over pairs i<j.  Requires R >= 2."""
    d = pairwise_l2(weights, include=include)
    _require_pairs(d.shape[0])
    return float(d[np.triu_indices(d.shape[0], k=1)].mean())


# ---------------------------------------------------------------------------
# Per-class and subgroup metrics
# ---------------------------------------------------------------------------


def _check_num_classes(num_classes, p: np.ndarray, y: np.ndarray) -> int:
    if isinstance(num_classes, (bool, np.bool_)) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be an int, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if y.max() >= num_classes:
        raise ValueError(f"labels contain class {y.max()} >= num_classes={num_classes}")
    if p.max() >= num_classes:
        raise ValueError(f"preds contain class {p.max()} >= num_classes={num_classes}")
    return int(num_classes)


def per_class_accuracy(preds, labels, num_classes) -> np.ndarray:
    """(R, C) accuracy per replica and true class:
    ``A[r, c] = #{n: labels[n]=c, preds[r,n]=c} / #{n: labels[n]=c}``;
    nan for a class absent from ``labels``."""
    p, y = _check_preds_labels(preds, labels)
    c = _check_num_classes(num_classes, p, y)
    r, _ = p.shape
    n_per_class = np.bincount(y, minlength=c)
    # Flat (replica, class) cells so one bincount covers every replica.
    cells = (np.arange(r, dtype=np.int64)[:, None] * c + y).ravel()
    hits = np.bincount(cells, weights=(p == y).ravel(), minlength=r * c).reshape(r, c)
    out = np.full((r, c), np.nan)
    np.divide(hits, n_per_class, out=out, where=n_per_class > 0)
    return out


def per_class_summary(preds, labels, num_classes) -> pd.DataFrame:
    """One row per class: ``class``, ``n_examples`` (count in labels), ``mean``
    and ``std`` (ddof=1) across replicas of ``per_class_accuracy``.
    Absent classes, and ``std`` when R == 1, give nan; a class whose accuracy is equal in every
    replica has a std of exactly 0 (see ``_sample_std``)."""
    acc = per_class_accuracy(preds, labels, num_classes)
    r, c = acc.shape
    n_per_class = np.bincount(np.asarray(labels), minlength=c)
    present = n_per_class > 0
    mean = np.full(c, np.nan)
    std = np.full(c, np.nan)
    # Absent classes are all-nan columns; skipping them avoids empty-slice warnings.
    mean[present] = acc[:, present].mean(axis=0)
    if r >= 2:
        std[present] = [_sample_std(acc[:, k]) for k in np.flatnonzero(present)]  # equal values: exactly 0
    return pd.DataFrame({"class": np.arange(c), "n_examples": n_per_class, "mean": mean, "std": std})


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def subgroup_rates(preds, labels, groups, positive=1) -> pd.DataFrame:
    """Per replica, positive class and group: confusion counts and error rates.

    ``positive`` in {0, 1}: binary target; labels and preds must be in {0, 1};
    one row per (replica, group) with ``class = positive``.
    ``positive=None``: one-vs-rest for every class value seen in labels or
    preds; one row per (replica, class, group).
    For positive class c on the group's examples: ``tp = #(y=c, p=c)``,
    ``fn = #(y=c, p!=c)``, ``fp = #(y!=c, p=c)``, ``tn = #(y!=c, p!=c)``;
    ``fpr = fp/(fp+tn)``, ``fnr = fn/(fn+tp)`` (nan when the denominator is
    0); ``accuracy = #(p == y)/n`` is the replica's ordinary accuracy on the
    group (equal to (tp+tn)/n for a binary target, and repeated across class
    rows in the one-vs-rest case); ``n`` = examples in the group.
    Note: the paper's released code computed FNR as FN/(FP+TN); ours is
    FN/(FN+TP).
    Columns: replica, group, class, n, tp, fp, tn, fn, accuracy, fpr, fnr;
    rows sorted by replica, class, group (group values in ``np.unique`` order).
    """
    p, y = _check_preds_labels(preds, labels)
    g_raw = np.asarray(groups)
    if g_raw.ndim != 1 or g_raw.shape[0] != y.shape[0]:
        raise ValueError(f"groups must be 1-D with length N={y.shape[0]}, got shape {g_raw.shape}")
    if positive is None:
        classes = np.union1d(np.unique(y), np.unique(p))
    else:
        if (
            isinstance(positive, (bool, np.bool_))
            or not isinstance(positive, (int, np.integer))
            or positive not in (0, 1)
        ):
            raise ValueError(f"positive must be 0, 1 or None (one-vs-rest), got {positive!r}")
        for name, arr in (("labels", y), ("preds", p)):
            if arr.max() > 1:
                raise ValueError(
                    f"{name} contain class {arr.max()} but positive={positive} needs a "
                    "binary target in {0, 1}; use positive=None for one-vs-rest"
                )
        classes = np.array([positive])
    group_values, g = np.unique(g_raw, return_inverse=True)
    g = g.reshape(-1)  # numpy 2.x may keep the input's shape
    r, _ = p.shape
    n_g, n_c = group_values.shape[0], classes.shape[0]
    # Compact class codes (0..K-1) so counts scale with classes seen, not max id.
    y_code = np.searchsorted(classes, y)
    p_code = np.searchsorted(classes, p)
    y_in = classes[np.minimum(y_code, n_c - 1)] == y  # label is one of `classes`
    p_in = classes[np.minimum(p_code, n_c - 1)] == p
    correct = p == y
    rep = np.arange(r, dtype=np.int64)[:, None]

    def count(mask: np.ndarray, code: np.ndarray) -> np.ndarray:
        # (R, K, G) counts of mask over cells (replica, class code, group).
        cells = (rep * n_c + code) * n_g + g
        return np.bincount(cells[mask], minlength=r * n_c * n_g).reshape(r, n_c, n_g)

    y_full = np.broadcast_to(y_code, p.shape)
    tp = count(correct & y_in, y_full)
    fp = count(~correct & p_in, p_code)
    # Positives per (class, group) do not depend on the replica.
    n_pos = np.bincount((y_code * n_g + g)[y_in], minlength=n_c * n_g).reshape(n_c, n_g)
    n_group = np.bincount(g, minlength=n_g)
    fn = n_pos[None] - tp
    tn = n_group[None, None] - n_pos[None] - fp
    hits = np.bincount((rep * n_g + g)[correct], minlength=r * n_g).reshape(r, n_g)
    acc = np.broadcast_to((hits / n_group)[:, None, :], tp.shape)

    shape = tp.shape
    return pd.DataFrame(
        {
            "replica": np.broadcast_to(np.arange(r)[:, None, None], shape).ravel(),
            "group": group_values[np.broadcast_to(np.arange(n_g), shape).ravel()],
            "class": np.broadcast_to(classes[None, :, None], shape).ravel(),
            "n": np.broadcast_to(n_group, shape).ravel(),
            "tp": tp.ravel(),
            "fp": fp.ravel(),
            "tn": tn.ravel(),
            "fn": fn.ravel(),
            "accuracy": acc.ravel(),
            "fpr": _safe_ratio(fp, fp + tn).ravel(),
            "fnr": _safe_ratio(fn, fn + tp).ravel(),
        }
    )


def subgroup_summary(rates: pd.DataFrame) -> pd.DataFrame:
    """Across-replica summary of ``subgroup_rates`` output per (class, group).

    Columns: class, group, n (examples in the subgroup), n_replicas, and
    ``<m>_mean`` / ``<m>_std`` (ddof=1) for m in accuracy, fpr, fnr.  nan
    rates (zero denominator) are skipped; a rate nan in every replica, or a
    std over fewer than 2 values, gives nan.
    """
    required = ["replica", "class", "group", "n", "accuracy", "fpr", "fnr"]
    missing = [col for col in required if col not in rates.columns]
    if missing:
        raise ValueError(f"rates is missing column(s) {missing}")
    grouped = rates.groupby(["class", "group"], sort=True)
    out = grouped.agg(
        n=("n", "first"),
        n_replicas=("replica", "nunique"),
        accuracy_mean=("accuracy", "mean"),
        accuracy_std=("accuracy", lambda s: _sample_std(s.dropna().to_numpy())),
        fpr_mean=("fpr", "mean"),
        fpr_std=("fpr", lambda s: _sample_std(s.dropna().to_numpy())),
        fnr_mean=("fnr", "mean"),
        fnr_std=("fnr", lambda s: _sample_std(s.dropna().to_numpy())),
    )
    return out.reset_index()


# ---------------------------------------------------------------------------
# Per-example instability
# ---------------------------------------------------------------------------


def per_example_instability(preds, labels) -> pd.DataFrame:
    """One row per example n: ``frac_correct = mean_r [preds[r,n]==labels[n]]``,
    ``n_distinct`` = number of distinct predicted classes, ``modal_agreement``
    = ``max_c n_c / R`` (fraction predicting the modal class)."""
    p, y = _check_preds_labels(preds, labels)
    r, n = p.shape
    counts = _class_counts(p)
    return pd.DataFrame(
        {
            "example": np.arange(n),
            "frac_correct": (p == y).mean(axis=0),
            "n_distinct": np.count_nonzero(counts, axis=1),
            "modal_agreement": counts.max(axis=1) / r,
        }
    )


# ---------------------------------------------------------------------------
# Test-set vs distribution variance (Jordan, ICLR 2024)
# ---------------------------------------------------------------------------


def distribution_variance(preds, labels) -> dict:
    """Split the variance of test accuracy into finite-test-set and distribution parts.

    After Jordan, "On the Variance of Neural Network Training with respect to
    Test Sets and Distributions" (ICLR 2024).  With
    ``p_n = mean_r [preds[r,n]==labels[n]]``:
    ``observed_var = var_r(acc_r, ddof=1)``;
    ``predicted_var = sum_n p_n (1 - p_n) * R/(R-1) / N^2``, the accuracy
    variance expected if errors on different examples were independent
    (R/(R-1) makes each per-example Bernoulli variance unbiased);
    ``distribution_var = N/(N-1) * (observed_var - predicted_var)``, the
    estimate of the variance of accuracy over the data distribution.  Why
    N/(N-1): for a test set of N examples drawn independently, the expected
    observed variance is ``E[p(1-p)]/N + (N-1)/N * distribution variance``
    (the N diagonal terms of the examples' covariance are per-example
    Bernoulli variances, the N(N-1) others average to the distribution
    variance).  The estimate is NOT clipped: a negative value means that the
    noise of the estimate exceeds the quantity, and clipping it to zero would
    bias the estimator upward; ``negative`` flags it (and nan for N = 1).
    ``distribution_var_raw = observed_var - predicted_var`` (before N/(N-1)).
    Jordan's finding is observed ~= predicted: most run-to-run variance is
    finite-test-set noise.  Also returns ``n_replicas`` and ``n_examples``.
    Requires R >= 2.  Equal accuracies in every replica give ``observed_var``
    of exactly 0 (as in ``_sample_std``), and so ``distribution_var_raw = -predicted_var``.
    """
    p, y = _check_preds_labels(preds, labels)
    r, n = p.shape
    _require_pairs(r)
    correct = p == y
    acc = correct.mean(axis=1)
    observed = 0.0 if np.all(acc == acc[0]) else float(np.var(acc, ddof=1))  # equal values: exactly 0
    pn = correct.mean(axis=0)
    predicted = float((pn * (1.0 - pn)).sum() * r / (r - 1) / (n * n))
    raw = observed - predicted
    estimate = n / (n - 1) * raw if n >= 2 else float("nan")
    return {
        "observed_var": observed,
        "predicted_var": predicted,
        "distribution_var": estimate,
        "distribution_var_raw": raw,
        "negative": bool(estimate < 0),
        "n_replicas": int(r),
        "n_examples": int(n),
    }


# ---------------------------------------------------------------------------
# Uncertainty and tests across replicas
# ---------------------------------------------------------------------------


def bootstrap_ci(
    values_or_preds,
    statistic: Callable[[np.ndarray], float],
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval over replicas.

    Draws all ``n_boot`` resamples of the R rows (axis 0, with replacement)
    at once from ``np.random.default_rng(seed)``, applies ``statistic`` to
    each resampled array (so it may be per-replica values (R,) or preds
    (R, N)), and returns the ``(1-level)/2`` and ``(1+level)/2`` percentiles
    (numpy's default linear interpolation).  Deterministic for a given seed.
    Requires R >= 2, n_boot >= 1, 0 < level < 1, scalar statistic.
    """
    x = np.asarray(values_or_preds)
    if x.ndim < 1:
        raise ValueError(f"values_or_preds must be at least 1-D, got shape {x.shape}")
    _require_pairs(x.shape[0])
    if isinstance(n_boot, (bool, np.bool_)) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int, got {n_boot!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.shape[0], size=(n_boot, x.shape[0]))
    # The statistic is an arbitrary callable, so apply it per resample.
    boot = np.empty(n_boot, dtype=np.float64)
    for b in range(n_boot):
        value = np.asarray(statistic(x[idx[b]]))
        if value.ndim != 0:
            raise ValueError(f"statistic must return a scalar, got shape {value.shape}")
        boot[b] = value
    alpha = (1.0 - level) / 2.0
    low, high = np.percentile(boot, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(low), float(high)


def spread_test(a, b, center: str = "median") -> dict:
    """Equality-of-variance test of two settings' per-replica values.

    ``scipy.stats.levene(a, b, center=center)``: ``center='median'`` is the
    Brown-Forsythe test, ``center='mean'`` the original Levene test.
    W = (N-2) * sum_i n_i (Zbar_i - Zbar)^2 / sum_ij (Z_ij - Zbar_i)^2 with
    Z_ij = |x_ij - center_i|, p from F(1, N-2).  Returns ``statistic``,
    ``pvalue``, ``test``, ``n_a``, ``n_b``.  If all Z are equal within each
    group the statistic is 0/0 -> nan or x/0 -> inf (no warning).
    Requires >= 2 finite values in each of ``a`` and ``b``.
    """
    tests = {"median": "Brown-Forsythe", "mean": "Levene"}
    if center not in tests:
        raise ValueError(f"center must be 'median' or 'mean', got {center!r}")
    arrays = []
    for name, v in (("a", a), ("b", b)):
        arr = np.asarray(v, dtype=np.float64)
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
        if arr.shape[0] < 2:
            raise ValueError(f"{name} needs at least 2 values, got {arr.shape[0]}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains non-finite values")
        arrays.append(arr)
    # Degenerate inputs (no spread within groups) divide by zero inside scipy;
    # nan/inf is the honest answer there, so silence only that arithmetic.
    with np.errstate(divide="ignore", invalid="ignore"):
        res = stats.levene(arrays[0], arrays[1], center=center)
    return {
        "statistic": float(res.statistic),
        "pvalue": float(res.pvalue),
        "test": tests[center],
        "n_a": int(arrays[0].shape[0]),
        "n_b": int(arrays[1].shape[0]),
    }


# ---------------------------------------------------------------------------
# Multi-label heads (CelebA's 40 attributes): rates pooled over attributes
# ---------------------------------------------------------------------------


def _as_bits(x, name: str, ndim: int) -> np.ndarray:
    """``x`` as a bool array of ``ndim`` dims from bool or 0/1 integers (``store.unpack_bits`` gives bool)."""
    arr = np.asarray(x)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.integer) or (arr.size and not np.isin(arr, (0, 1)).all()):
            raise ValueError(f"{name} must hold 0/1 or bool per attribute, got dtype {arr.dtype}")
        arr = arr.astype(bool)
    return arr


def pooled_rates(preds, labels, groups=None) -> pd.DataFrame:
    """Per replica: FPR and FNR of a multi-label head pooled over its K attributes, on all examples and
    on each group value (the paper's CelebA table: overall and by Male / not Male).

    ``preds`` (R, N, K) and ``labels`` (N, K): 0/1 or bool, attribute k of example n. On a subset of
    examples, over every (example, attribute) cell: ``fpr = sum FP / sum negatives`` (label 0) and
    ``fnr = sum FN / sum positives`` (label 1); nan where the denominator is 0. Pooled, not the mean of
    per-attribute rates: a rare attribute weighs by its count. ``groups`` (N,): a group value per
    example, or None for the overall rows only.
    Columns: replica, subset ("all", then "group=<v>" per value in ``np.unique`` order), n (examples),
    positives, negatives, fp, fn, fpr, fnr; rows by replica, then subset.
    """
    p = _as_bits(preds, "preds", 3)
    y = _as_bits(labels, "labels", 2)
    r, n, k = p.shape
    if r < 1 or n < 1 or k < 1:
        raise ValueError(f"preds needs at least 1 replica, example and attribute, got shape {p.shape}")
    if y.shape != (n, k):
        raise ValueError(f"labels has shape {y.shape} but preds has (N, K) = {(n, k)}")
    subsets = [("all", np.ones(n, dtype=bool))]
    if groups is not None:
        g = np.asarray(groups)
        if g.shape != (n,):
            raise ValueError(f"groups must be 1-D with length N={n}, got shape {g.shape}")
        subsets += [(f"group={v}", g == v) for v in np.unique(g)]
    rows = []
    for name, mask in subsets:
        ys, ps = y[mask], p[:, mask]
        positives, negatives = int(ys.sum()), int((~ys).sum())
        fp = (ps & ~ys).sum(axis=(1, 2))  # (R,) integer counts: a replica with no error gets exactly 0
        fn = (~ps & ys).sum(axis=(1, 2))
        for i in range(r):
            rows.append(
                {
                    "replica": i,
                    "subset": name,
                    "n": int(mask.sum()),
                    "positives": positives,
                    "negatives": negatives,
                    "fp": int(fp[i]),
                    "fn": int(fn[i]),
                    "fpr": fp[i] / negatives if negatives else float("nan"),
                    "fnr": fn[i] / positives if positives else float("nan"),
                }
            )
    return pd.DataFrame(rows).sort_values(["replica"], kind="mergesort", ignore_index=True)


def attribute_churn(preds) -> np.ndarray:
    """(K,) churn of each attribute of a multi-label head: the mean over replica pairs i<j of the share
    of examples whose attribute k the two predict differently. With m replicas predicting 1 on a cell,
    m (R - m) pairs differ there: ``churn_k = sum_n m (R - m) / (N R (R - 1) / 2)``, exactly 0 when all
    agree. Requires R >= 2; ``preds`` (R, N, K) of 0/1 or bool."""
    p = _as_bits(preds, "preds", 3)
    r, n, _ = p.shape
    _require_pairs(r)
    m = p.sum(axis=0, dtype=np.int64)  # (N, K) replicas predicting 1
    return (m * (r - m)).sum(axis=0) / (n * r * (r - 1) / 2)
