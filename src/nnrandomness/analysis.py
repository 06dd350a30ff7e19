"""From the run store to the tables the analysis chapters plot and quote.

The per-cell tables take a :class:`store.Runs` (the store view of ``store.load_runs``), map
over its cells (:meth:`store.Runs.iter_cells`: each with its (R, N) prediction matrix and its
setting's *recorded* meaning) and return a tidy pandas frame: one row per *cell* (hardware,
dataset, model, setting), or per cell and class, subgroup or example; the summaries
(:func:`rare_vs_common`, :func:`instability_summary`, ...) take another function's table. All the maths is in
:mod:`metrics` (the exact-zero rule included); this module only calls the metrics and labels
the results. The findings and the prose's numbers are :mod:`findings`.
Nothing here plots (that is :mod:`charts`) and nothing reads globals: a chapter re-run out of
order gets the same tables.

Uncertainty (:mod:`stats`): the SD of accuracy has its chi-square interval (calibrated at ten
replicas, where a bootstrap of an SD is not); pairwise metrics (churn, L2) have BCa bootstrap
intervals over replicas with a fixed seed, so a chapter re-executed on the same runs gives
byte-identical numbers, computed over the pairs of *distinct* original replicas of each
resample: a replica drawn twice would otherwise form a pair with itself, whose distance is zero,
and drag the interval down (with R = 10 a tenth of the resampled pairs are such self-pairs).
Differences between settings are decided by tests (permutation, the independent-examples null)
in the functions of the last section, adjusted with Holm within each chapter's family.

A cell that is absent or has too few replicas gives no row (or NaN where a CI needs more
replicas): chapters say what is missing with :func:`missing` and :func:`missing_note`
instead of failing.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from . import data, metrics, models, noise, stats, store

__all__ = [
    "CELL",
    "CLASS_TESTS",
    "MAIN_CELL",
    "MIN_REPLICAS_CI",
    "NULL_GROUP_COLUMNS",
    "N_BOOT",
    "REPLICA_EXPORT_COLUMNS",
    "SUBGROUP_TESTS",
    "TOOLING_COLUMNS",
    "TOOLING_GROUPS",
    "TOOLING_TESTS",
    "architecture_tests",
    "cell_name",
    "check_selection",
    "churn_by_epoch",
    "churn_flips",
    "churn_tests",
    "class_null_tests",
    "commit_dates",
    "distribution_variance",
    "examples_votes",
    "hardware_compare",
    "held",
    "identical_tooling_warnings",
    "identity",
    "instability_summary",
    "load_settings",
    "load_summary",
    "missing",
    "missing_note",
    "multilabel_rates",
    "per_class",
    "per_class_spread",
    "per_example",
    "rare_subgroups",
    "rare_vs_common",
    "replica_export",
    "runs_table",
    "setting_order",
    "sd_intervals",
    "sd_tests",
    "spread_null_groups",
    "spread_null_tests",
    "subgroup_noise",
    "subgroup_noise_summary",
    "subgroup_null_tests",
    "subgroup_rates",
    "subgroups",
    "tooling_churn",
    "tooling_tests",
    "tooling_times",
    "topline",
    "training_curves",
    "twin_identity",
    "ulp_tests",
    "unstable_examples",
    "variance_direct",
    "variance_tests",
    "write_export",
]

# ----------------------------------------------------------------------------- conventions
CELL = store.CELL  # one cell of the study: its replicas are compared
N_BOOT = stats.N_BOOT  # bootstrap resamples per interval
LEVEL = 0.95  # confidence level of every interval
SEED = 0  # bootstrap seed: fixed, so committed chapter outputs are byte-identical on re-run
# Fewer replicas than this give NaN intervals: a bootstrap over 3 or 4 replicas is mostly
# resamples of one or two distinct replicas, and says little.
MIN_REPLICAS_CI = 5
# The setting each non-deterministic setting repeats with deterministic kernels and the same
# seeds: on hardware whose kernels are deterministic anyway (the CPU at a fixed thread count)
# the twins are bit-identical.
TWINS = (("IMPL", "CONTROL"), ("ALGO+IMPL", "ALGO"))


def setting_order(settings: Iterable[str]) -> list[str]:
    """Settings in the book's order (noise.SETTINGS: the paper's four, single sources, ULP);
    unknown names last, alphabetically."""
    known = list(noise.SETTINGS)
    given = list(dict.fromkeys(settings))
    return [s for s in known if s in given] + sorted(s for s in given if s not in known)


def _sorted(df: pd.DataFrame, extra: list[str] | None = None) -> pd.DataFrame:
    """Rows in a stable, readable order: cell keys (settings in the book's order), then extra."""
    if df.empty:
        return df.reset_index(drop=True)
    keys = [k for k in CELL if k in df.columns]
    out = df.copy()
    if "setting" in out.columns:
        order = setting_order(out["setting"].unique())
        out["_setting_rank"] = out["setting"].map({s: i for i, s in enumerate(order)})
        keys = ["_setting_rank" if k == "setting" else k for k in keys]
    out = out.sort_values(keys + (extra or []), kind="mergesort", ignore_index=True)
    return out.drop(columns="_setting_rank", errors="ignore")


def cell_name(dataset: str, model: str) -> str:
    """How captions and tables name a (dataset, model) pair: ``digits/smallcnn``."""
    return f"{dataset}/{model}"


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    """Rows as a frame with fixed columns (also when there are no rows)."""
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------- cells
def _weights(paths: Iterable[str]) -> list[dict[str, np.ndarray]]:
    """Final weights of replicas as name -> numpy array (what metrics.pairwise_l2 takes)."""
    return [{k: v.numpy() for k, v in store.load_weights(p).items()} for p in paths]


def _acc_std(preds: np.ndarray, labels: np.ndarray) -> float:
    """Std (ddof=1) of top-1 accuracy across replicas (exactly 0 when all are equal)."""
    return metrics.accuracy_summary(preds, labels)["std"]


def _recorded(cell: store.Cell) -> noise.NoiseSetting:
    """The cell's setting as its manifests record it (not as today's noise.SETTINGS defines it)."""
    return noise.NoiseSetting(cell.key["setting"], **cell.meaning)


def _cells_by(runs: store.Runs, keys: list[str]) -> dict[tuple, store.Cell]:
    """The view's cells by their values of ``keys`` (a subset of CELL that identifies them)."""
    return {tuple(c.key[k] for k in keys): c for c in runs.iter_cells()}


# ----------------------------------------------------------------------------- intervals
def _pair_ci(matrix: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """BCa interval over replicas of the mean of a pair matrix (churn, L2), resampled pairs of
    distinct original replicas only (``stats.bootstrap_interval``); NaNs below MIN_REPLICAS_CI."""
    if matrix.shape[0] < MIN_REPLICAS_CI:
        return float("nan"), float("nan")
    iv = stats.bootstrap_interval(matrix, pairs=True, n_boot=n_boot, level=LEVEL, seed=seed)
    return iv.low, iv.high


def _sd_ci(values: np.ndarray) -> tuple[float, float]:
    """Chi-square interval of the SD of per-replica values (``stats.sd_interval``: exact for
    normal values, calibrated at 10 replicas where a bootstrap of an SD is not); NaNs below
    MIN_REPLICAS_CI, exactly (0, 0) when every value is equal."""
    if values.shape[0] < MIN_REPLICAS_CI:
        return float("nan"), float("nan")
    iv = stats.sd_interval(values, level=LEVEL, method="chi2")
    return iv.low, iv.high


# ----------------------------------------------------------------------------- top line
TOPLINE_COLUMNS = CELL + [
    "n_replicas",
    "n_examples",
    "acc_mean",
    "acc_std",
    "acc_std_lo",
    "acc_std_hi",
    "acc_min",
    "acc_max",
    "churn",
    "churn_lo",
    "churn_hi",
    "one_correct",
    "both_wrong",
    "l2",
    "l2_lo",
    "l2_hi",
    "n_weight_hashes",
    "n_prediction_hashes",
    "expects_identical",
    "identical",
]


def topline(runs: store.Runs, weights: bool = True, n_boot: int = N_BOOT, seed: int = SEED) -> pd.DataFrame:
    """One row per cell: the paper's figures 1 and 2.

    Columns: the cell keys; ``n_replicas``, ``n_examples``; top-1 accuracy ``acc_mean``,
    ``acc_std`` (ddof=1) with its chi-square interval ``acc_std_lo``/``acc_std_hi``, ``acc_min``,
    ``acc_max``; predictive ``churn`` with ``churn_lo``/``churn_hi`` and its two parts
    ``one_correct`` (one replica right, the other wrong) and ``both_wrong`` (both wrong,
    differently); mean pairwise ``l2`` distance of the final weights (BatchNorm buffers
    excluded) with ``l2_lo``/``l2_hi`` (NaN without ``weights``; churn and L2 intervals are BCa
    over replicas); the numbers of distinct
    weight and prediction hashes; ``expects_identical`` (the setting promises bit-identical
    replicas) and ``identical`` (all replicas have one weights hash and one predictions hash).
    Pairwise columns are NaN for a cell with a single replica.
    """
    rows = []
    for cell in runs.iter_cells():
        key, preds, labels, reps = cell.key, cell.preds, cell.labels, cell.replicas
        r, n = preds.shape
        acc = metrics.accuracy_summary(preds, labels)
        row = {
            **key,
            "n_replicas": r,
            "n_examples": n,
            "acc_mean": acc["mean"],
            "acc_std": _acc_std(preds, labels),
            "acc_min": acc["min"],
            "acc_max": acc["max"],
        }
        lo, hi = _sd_ci(metrics.accuracy(preds, labels))
        row.update(acc_std_lo=lo, acc_std_hi=hi)
        nan = float("nan")
        row.update(churn=nan, churn_lo=nan, churn_hi=nan, one_correct=nan, both_wrong=nan, l2=nan, l2_lo=nan, l2_hi=nan)
        if r >= 2:
            parts = metrics.churn_decomposition(preds, labels)
            lo, hi = _pair_ci(metrics.pairwise_churn(preds), n_boot, seed)
            row.update(
                churn=parts["churn"],
                churn_lo=lo,
                churn_hi=hi,
                one_correct=parts["one_correct"],
                both_wrong=parts["both_wrong"],
            )
            if weights:
                w = _weights(reps["path"])
                lo, hi = _pair_ci(metrics.pairwise_l2(w), n_boot, seed)
                row.update(l2=metrics.mean_pairwise_l2(w), l2_lo=lo, l2_hi=hi)
        n_w, n_p = reps["weights_hash"].nunique(), reps["predictions_hash"].nunique()
        row.update(
            n_weight_hashes=n_w,
            n_prediction_hashes=n_p,
            expects_identical=_recorded(cell).expects_identical,
            identical=bool(n_w == 1 and n_p == 1),
        )
        rows.append(row)
    return _sorted(_frame(rows, TOPLINE_COLUMNS))


SD_COLUMNS = CELL + ["n_replicas", "acc_sd", "chi2_lo", "chi2_hi", "bonett_lo", "bonett_hi"]


def sd_intervals(runs: store.Runs) -> pd.DataFrame:
    """Per cell: the SD (ddof=1) of top-1 accuracy across replicas with its chi-square interval
    (exact for normal accuracies) and Bonett's (robust to their kurtosis), both from
    ``stats.sd_interval`` at 95 %; NaN intervals below MIN_REPLICAS_CI replicas."""
    rows = []
    for cell in runs.iter_cells():
        acc = metrics.accuracy(cell.preds, cell.labels)
        row = {**cell.key, "n_replicas": len(acc), "acc_sd": _acc_std(cell.preds, cell.labels)}
        for method in ("chi2", "bonett"):
            if len(acc) >= MIN_REPLICAS_CI:
                iv = stats.sd_interval(acc, level=LEVEL, method=method)
                row[f"{method}_lo"], row[f"{method}_hi"] = iv.low, iv.high
            else:
                row[f"{method}_lo"] = row[f"{method}_hi"] = float("nan")
        rows.append(row)
    return _sorted(_frame(rows, SD_COLUMNS))


EPOCH_COLUMNS = CELL + [
    "epoch",
    "n_replicas",
    "churn",
    "churn_lo",
    "churn_hi",
    "n_same",
    "same_share",
    "same_lo",
    "same_hi",
]


def _epoch_preds(cell: store.Cell) -> dict[int, np.ndarray]:
    """The cell's (R, N) predictions after each stored epoch: the snapshots its replicas all hold
    (loaded with ``load_runs(snapshots=True)``) and the final epoch (``epochs`` of the spec)."""
    out = {}
    epochs = cell.replicas["epochs"].unique()
    if len(epochs) == 1:
        out[int(epochs[0])] = cell.preds
    held = set.intersection(*(set(e) for e in cell.replicas["snapshot_epochs"])) if len(cell.replicas) else set()
    p = cell.predictions
    r, n = cell.preds.shape
    # The store sorts a cell's rows by replica, then example: with every example of every replica
    # present, a column reshapes to the (R, N) matrix without a pivot per epoch.
    whole = len(p) == r * n and (p["replica"].to_numpy()[::n] == cell.replicas["replica"].to_numpy()).all()
    for e in sorted(held):
        column = store.snapshot_column(int(e))
        if column in p.columns:
            matrix = p[column].to_numpy().reshape(r, n) if whole else store.prediction_matrix(p, column)[0]
            out[int(e)] = matrix.astype(np.int64)
    return dict(sorted(out.items()))


def churn_by_epoch(
    runs: store.Runs,
    cell: dict,
    *,
    settings: Iterable[str] | None = None,
    reference: str = "CONTROL",
    n_boot: int = N_BOOT,
    seed: int = SEED,
) -> pd.DataFrame:
    """Churn as a function of training length: for each setting of one (hardware, dataset,
    model) ``cell`` (default ALGO, the single sources and ULP) and each epoch its replicas hold predictions
    for (snapshots and the final epoch), the mean pair churn with its BCa interval over replicas
    (NaN below MIN_REPLICAS_CI), and how many replicas predict exactly as ``reference``'s first
    replica at that epoch (``n_same``; CONTROL's replicas are bit-identical), as a share with its
    Clopper-Pearson interval (NaN without the reference at that epoch)."""
    cells = _main_cells(runs, cell)
    ref = _epoch_preds(cells[reference]) if reference in cells else {}
    settings = ("ALGO", *SINGLE_SOURCES, "ULP") if settings is None else settings
    rows = []
    nan = float("nan")
    for setting in [s for s in setting_order(settings) if s in cells]:
        for epoch, preds in _epoch_preds(cells[setting]).items():
            r = preds.shape[0]
            row = {**cells[setting].key, "epoch": epoch, "n_replicas": r}
            row.update(churn=nan, churn_lo=nan, churn_hi=nan, n_same=None, same_share=nan, same_lo=nan, same_hi=nan)
            if r >= 2:
                d = stats.churn_matrix(preds)
                row["churn"] = float(d[np.triu_indices(r, k=1)].mean())
                row["churn_lo"], row["churn_hi"] = _pair_ci(d, n_boot, seed)
            if epoch in ref and ref[epoch].shape[1] == preds.shape[1]:
                k = int((preds == ref[epoch][0]).all(axis=1).sum())
                iv = stats.clopper_pearson(k, r, level=LEVEL)
                row.update(n_same=k, same_share=iv.estimate, same_lo=iv.low, same_hi=iv.high)
            rows.append(row)
    return _sorted(_frame(rows, EPOCH_COLUMNS), ["epoch"])


def architecture_tests(
    runs: store.Runs,
    cell: dict,
    models: Iterable[str],
    *,
    setting: str = "ALGO",
    n: int = stats.N_PERM,
    seed: int = SEED,
) -> pd.DataFrame:
    """Churn of ``setting`` on each of ``models`` against the same setting on ``cell``'s model
    (same hardware and dataset): the permutation test of the difference in mean pair churn, its
    BCa interval, Holm across the family ``architecture``. ``a`` and ``b`` name the models; a
    model missing the setting (or with fewer than 3 replicas) gives no row."""
    base = _main_cells(runs, cell).get(setting)
    rows = []
    for m in models:
        other = _main_cells(runs, {**cell, "model": m}).get(setting)
        if base is None or other is None or m == cell["model"] or min(len(base.preds), len(other.preds)) < 3:
            continue
        if base.preds.shape[1] != other.preds.shape[1]:
            continue
        row = _churn_row("architecture", f"churn_{m}_vs_{cell['model']}_{_slug(setting)}", other, base, n, seed)
        rows.append({**row, "a": f"{setting} on {m}", "b": f"{setting} on {cell['model']}"})
    return _tests_frame(rows)


def identity(runs: store.Runs) -> pd.DataFrame:
    """Bit-identity of every cell: one row per cell with n_replicas, the numbers of distinct
    weights and predictions hashes, the (shortened) hash when there is one, whether the setting
    promises identity and whether it holds."""
    hashes = ["n_weight_hashes", "n_prediction_hashes", "weights_hash"]
    columns = [*CELL, "n_replicas", *hashes, "expects_identical", "identical"]
    rows = []
    for cell in runs.iter_cells():
        reps = cell.replicas
        n_w, n_p = reps["weights_hash"].nunique(), reps["predictions_hash"].nunique()
        rows.append(
            {
                **cell.key,
                "n_replicas": len(reps),
                "n_weight_hashes": n_w,
                "n_prediction_hashes": n_p,
                "weights_hash": reps["weights_hash"].iloc[0][:12] if n_w == 1 else "(differ)",
                "expects_identical": _recorded(cell).expects_identical,
                "identical": bool(n_w == 1 and n_p == 1),
            }
        )
    return _sorted(_frame(rows, columns))


def twin_identity(runs: store.Runs, twins: Iterable[tuple[str, str]] = TWINS) -> pd.DataFrame:
    """Is a non-deterministic setting bit-identical to its deterministic twin (same seeds)?

    For every (hardware, dataset, model) and pair (setting, twin), e.g. IMPL and CONTROL,
    ALGO+IMPL and ALGO: replica k of one against replica k of the other, for the replica ids
    both hold. Columns: hardware, dataset, model, setting, twin, n_matched, n_identical (pairs
    with equal weights hashes and equal predictions hashes), all_identical.
    """
    columns = ["hardware", "dataset", "model", "setting", "twin", "n_matched", "n_identical", "all_identical"]
    r = runs.replicas
    if r.empty or "weights_hash" not in r.columns:
        return _frame([], columns)
    rows = []
    for base, frame in r.groupby(["hardware", "dataset", "model"], sort=True):
        for setting, twin in twins:
            a = frame[frame["setting"] == setting].set_index("replica")
            b = frame[frame["setting"] == twin].set_index("replica")
            matched = sorted(set(a.index) & set(b.index))
            if not matched:
                continue
            same = [
                (a.at[k, "weights_hash"] == b.at[k, "weights_hash"])
                and (a.at[k, "predictions_hash"] == b.at[k, "predictions_hash"])
                for k in matched
            ]
            rows.append(
                {
                    **dict(zip(["hardware", "dataset", "model"], base)),
                    "setting": setting,
                    "twin": twin,
                    "n_matched": len(matched),
                    "n_identical": int(sum(same)),
                    "all_identical": all(same),
                }
            )
    return _frame(rows, columns)


# ----------------------------------------------------------------------------- per class
def _class_cells(runs: store.Runs):
    """The cells whose replicas predict class indices: a multi-label cell's bit masks (CelebA's 40 attributes)
    are no classes (2^40 of them; `multilabel_rates` reads those cells)."""
    return (c for c in runs.iter_cells() if not ("multilabel" in c.replicas and c.replicas["multilabel"].any()))


def _num_classes(preds: np.ndarray, labels: np.ndarray) -> int:
    return int(max(preds.max(), labels.max())) + 1


def per_class(runs: store.Runs) -> pd.DataFrame:
    """One row per cell and true class: ``class``, ``n_examples``, the mean and std (ddof=1)
    across replicas of the class's accuracy (``metrics.per_class_summary``), and n_replicas."""
    columns = CELL + ["class", "n_examples", "n_replicas", "mean", "std"]
    parts = []
    for cell in _class_cells(runs):
        summary = metrics.per_class_summary(cell.preds, cell.labels, _num_classes(cell.preds, cell.labels))
        parts.append(summary.assign(**cell.key, n_replicas=cell.preds.shape[0]))
    if not parts:
        return _frame([], columns)
    return _sorted(pd.concat(parts, ignore_index=True)[columns], ["class"])


def per_class_spread(runs: store.Runs, classes: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per cell: the spread of top-1 accuracy beside the spread of per-class accuracy
    (the paper's figure 3). Columns: n_replicas, acc_std, class_std_max (and the class it
    belongs to, ``class_max``, None when no class moves), class_std_mean, ratio_max = class_std_max / acc_std
    (NaN when top-1 accuracy does not move).
    ``classes`` is :func:`per_class`'s output, recomputed when not given."""
    columns = CELL + ["n_replicas", "acc_std", "class_std_mean", "class_std_max", "class_max", "ratio_max"]
    classes = per_class(runs) if classes is None else classes
    by_cell = {key: frame for key, frame in classes.groupby(CELL, sort=False)} if len(classes) else {}
    rows = []
    for cell in _class_cells(runs):
        key, preds = cell.key, cell.preds
        acc_std = _acc_std(preds, cell.labels)
        c = by_cell.get(tuple(key[k] for k in CELL), classes.iloc[:0]).dropna(subset=["std"])
        if c.empty:
            continue
        top = c.loc[c["std"].idxmax()]
        ratio = float(top["std"] / acc_std) if acc_std > 0 else float("nan")
        rows.append(
            {
                **key,
                "n_replicas": preds.shape[0],
                "acc_std": acc_std,
                "class_std_mean": float(c["std"].mean()),
                "class_std_max": float(top["std"]),
                "class_max": int(top["class"]) if top["std"] > 0 else None,  # no class moves: none is "max"
                "ratio_max": ratio,
            }
        )
    return _sorted(_frame(rows, columns))


# ----------------------------------------------------------------------------- subgroups
def subgroup_rates(runs: store.Runs) -> pd.DataFrame:
    """Per cell, replica, class (one-vs-rest) and group: confusion counts and rates
    (``metrics.subgroup_rates`` with ``positive=None``), for the cells whose dataset has a group
    attribute. ``replica`` is the store's replica id. ``n_subgroup`` = tp + fn = the test
    examples with that label and that attribute value; ``recall`` = tp / n_subgroup = 1 - fnr,
    the accuracy on the (label, attribute) subgroup."""
    columns = CELL + [
        "replica",
        "class",
        "group",
        "n",
        "n_subgroup",
        "tp",
        "fp",
        "tn",
        "fn",
        "accuracy",
        "recall",
        "fpr",
        "fnr",
    ]
    parts = []
    for cell in runs.iter_cells():
        if not cell.has_groups:
            continue
        rates = metrics.subgroup_rates(cell.preds, cell.labels, cell.groups, positive=None)
        rates["replica"] = np.asarray(cell.replica_ids)[rates["replica"].to_numpy()]
        rates["n_subgroup"] = rates["tp"] + rates["fn"]
        rates["recall"] = 1.0 - rates["fnr"]
        parts.append(rates.assign(**cell.key))
    if not parts:
        return _frame([], columns)
    return _sorted(pd.concat(parts, ignore_index=True)[columns], ["class", "group", "replica"])


def subgroups(runs: store.Runs, rare_share: float = 0.5, rates: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per cell and (label, attribute) subgroup: its size and the mean and spread across
    replicas of its error rates (``metrics.subgroup_summary``).

    Columns: cell keys, ``class`` (the label, one-vs-rest), ``group`` (the attribute value),
    ``n_subgroup`` (test examples with that label and attribute), ``share`` (n_subgroup over the
    class's examples), ``rare`` (share < rare_share: the minority attribute value of its class),
    ``n_replicas``, and mean/std of ``recall`` (accuracy on the subgroup, 1 - FNR), ``fpr``
    (FP/(FP+TN) among the group's examples of other labels) and ``fnr`` (FN/(FN+TP)).
    """
    columns = CELL + [
        "class",
        "group",
        "n_subgroup",
        "share",
        "rare",
        "n_replicas",
        "recall_mean",
        "recall_std",
        "fpr_mean",
        "fpr_std",
        "fnr_mean",
        "fnr_std",
    ]
    rates = subgroup_rates(runs) if rates is None else rates
    if rates.empty:
        return _frame([], columns)
    parts = []
    for key, frame in rates.groupby(CELL, sort=True):
        summary = metrics.subgroup_summary(frame.drop(columns=CELL))
        sizes = frame.groupby(["class", "group"], as_index=False)["n_subgroup"].first()
        summary = summary.merge(sizes, on=["class", "group"], how="left")
        per_class_n = summary.groupby("class")["n_subgroup"].transform("sum")
        summary["share"] = summary["n_subgroup"] / per_class_n.where(per_class_n > 0)
        summary["rare"] = summary["share"] < rare_share
        summary["recall_mean"] = 1.0 - summary["fnr_mean"]
        summary["recall_std"] = summary["fnr_std"]  # std(1 - x) = std(x)
        parts.append(summary.assign(**dict(zip(CELL, key))))
    return _sorted(pd.concat(parts, ignore_index=True)[columns], ["class", "group"])


def subgroup_noise(runs: store.Runs) -> pd.DataFrame:
    """How much of a subgroup's FNR spread a handful of examples explains by itself.

    Per cell and (label, attribute) subgroup: ``metrics.distribution_variance`` on the subgroup's
    examples alone (their accuracy is the subgroup's recall, 1 - FNR). ``fnr_observed_std`` is the
    std of FNR across replicas, ``fnr_predicted_std`` the std that independent per-example coin
    flips with the observed per-example error rates would give: with k examples FNR moves in steps
    of 1/k, so a rare subgroup's rate is noisy even when every example behaves independently.
    Columns: cell keys, class, group, n_subgroup, fnr_observed_std, fnr_predicted_std.
    """
    columns = CELL + ["class", "group", "n_subgroup", "fnr_observed_std", "fnr_predicted_std"]
    rows = []
    for cell in runs.iter_cells():
        key, preds, labels, groups = cell.key, cell.preds, cell.labels, cell.groups
        if not cell.has_groups or preds.shape[0] < 2:
            continue
        for c in np.unique(labels):
            for g in np.unique(groups):
                mask = (labels == c) & (groups == g)
                if not mask.any():
                    continue
                d = metrics.distribution_variance(preds[:, mask], labels[mask])
                rows.append(
                    {
                        **key,
                        "class": int(c),
                        "group": int(g),
                        "n_subgroup": int(mask.sum()),
                        "fnr_observed_std": math.sqrt(d["observed_var"]),
                        "fnr_predicted_std": math.sqrt(d["predicted_var"]),
                    }
                )
    return _sorted(_frame(rows, columns), ["class", "group"])


def subgroup_noise_summary(noise: pd.DataFrame, subs: pd.DataFrame) -> pd.DataFrame:
    """Per cell: the mean over the rare and over the common subgroups (``subgroups``) of
    :func:`subgroup_noise`'s ``fnr_observed_std`` and ``fnr_predicted_std``; ``subs`` is
    :func:`subgroups`' output, which says which subgroups are rare."""
    columns = CELL + ["subgroups", "fnr_observed_std", "fnr_predicted_std"]
    if noise.empty or subs.empty:
        return _frame([], columns)
    keys = CELL + ["class", "group"]
    merged = noise.merge(subs[keys + ["rare"]], on=keys)
    merged["subgroups"] = np.where(merged["rare"], "rare", "common")
    return merged.groupby(CELL + ["subgroups"], as_index=False)[["fnr_observed_std", "fnr_predicted_std"]].mean()[
        columns
    ]


def rare_vs_common(subs: pd.DataFrame) -> pd.DataFrame:
    """Per cell: the mean over rare and over common subgroups of the across-replica std (and the
    mean) of FNR and FPR, with the number of subgroups averaged. ``subs`` is :func:`subgroups`'
    output. Subgroups whose rate is undefined (no positives) are left out of that rate's mean."""
    columns = CELL + [
        "subgroups",
        "n_subgroups",
        "examples_mean",
        "fnr_std",
        "fpr_std",
        "fnr_mean",
        "fpr_mean",
        "n_replicas",
    ]
    if subs.empty:
        return _frame([], columns)
    out = (
        subs.assign(subgroups=np.where(subs["rare"], "rare", "common"))
        .groupby(CELL + ["subgroups"], as_index=False)
        .agg(
            n_subgroups=("class", "size"),
            examples_mean=("n_subgroup", "mean"),
            fnr_std=("fnr_std", "mean"),
            fpr_std=("fpr_std", "mean"),
            fnr_mean=("fnr_mean", "mean"),
            fpr_mean=("fpr_mean", "mean"),
            n_replicas=("n_replicas", "max"),
        )
    )
    out["_rank"] = out["subgroups"].map({"rare": 0, "common": 1})
    return _sorted(out, ["_rank"]).drop(columns="_rank")[columns]


# ----------------------------------------------------------------------------- per example
def per_example(runs: store.Runs) -> pd.DataFrame:
    """One row per cell and test example (``metrics.per_example_instability``): label, group,
    ``frac_correct`` (share of replicas right on it), ``n_distinct`` (distinct predicted
    classes), ``modal_agreement`` (share predicting the most common class), ``modal_prediction``
    (that class, the smallest on ties), ``flips`` (not all replicas agree) and n_replicas."""
    columns = CELL + [
        "example",
        "label",
        "group",
        "n_replicas",
        "frac_correct",
        "n_distinct",
        "modal_agreement",
        "modal_prediction",
        "flips",
    ]
    parts = []
    for cell in runs.iter_cells():
        inst = metrics.per_example_instability(cell.preds, cell.labels)
        votes = examples_votes(cell.predictions)
        modal = votes.sort_values(["example", "votes", "prediction"], ascending=[True, False, True]).drop_duplicates(
            "example"
        )
        # metrics numbers examples 0..N-1 by matrix column; map back to the store's example ids.
        inst["example"] = cell.examples[inst["example"].to_numpy()]
        inst["modal_prediction"] = inst["example"].map(modal.set_index("example")["prediction"]).astype(np.int64)
        parts.append(
            inst.assign(
                **cell.key,
                label=cell.labels,
                group=cell.groups,
                n_replicas=cell.preds.shape[0],
                flips=inst["n_distinct"] > 1,
            )
        )
    if not parts:
        return _frame([], columns)
    return _sorted(pd.concat(parts, ignore_index=True)[columns], ["example"])


def unstable_examples(examples: pd.DataFrame, setting: str, top_k: int) -> pd.DataFrame:
    """The at most ``top_k`` examples of :func:`per_example` rows on which the replicas of
    ``setting`` agree least (the smallest modal agreement, then the most distinct classes, the
    smallest share right, the smallest id), among those on which they do not all agree."""
    chosen = (
        examples[examples.setting == setting]
        .sort_values(["modal_agreement", "n_distinct", "frac_correct", "example"], ascending=[True, False, True, True])
        .head(top_k)
    )
    return chosen[chosen["flips"].astype(bool)]


def churn_flips(runs: store.Runs, reference: int = 0) -> pd.DataFrame:
    """Good and bad churn: per cell, against the replica with id ``reference``, the mean over
    the other replicas of the share of test examples that go correct -> wrong, wrong -> correct
    and wrong -> another wrong class (``metrics.churn_vs_reference``). Cells without the
    reference replica or with a single replica give no row."""
    columns = [
        *CELL,
        "n_replicas",
        "reference",
        "correct_to_wrong",
        "wrong_to_correct",
        "wrong_to_other_wrong",
        "churn",
    ]
    rows = []
    for cell in runs.iter_cells():
        replicas = cell.replica_ids
        if reference not in replicas or len(replicas) < 2:
            continue
        d = metrics.churn_vs_reference(cell.preds, cell.labels, reference=replicas.index(reference))
        rows.append(
            {
                **cell.key,
                "n_replicas": len(replicas),
                "reference": reference,
                **{
                    k: d[f"mean_{k}"] for k in ("correct_to_wrong", "wrong_to_correct", "wrong_to_other_wrong", "churn")
                },
            }
        )
    return _sorted(_frame(rows, columns))


def examples_votes(predictions: pd.DataFrame, examples: Iterable[int] | None = None) -> pd.DataFrame:
    """How many replicas predicted each class, per cell and example (only the classes predicted
    at least once). Columns: the cell keys present, example, label, prediction, votes, correct."""
    p = predictions if examples is None else predictions[predictions["example"].isin(list(examples))]
    keys = [k for k in CELL if k in p.columns]
    out = p.groupby(keys + ["example", "label", "prediction"], as_index=False).size().rename(columns={"size": "votes"})
    out["correct"] = out["prediction"] == out["label"]
    return _sorted(out, ["example", "prediction"])


def instability_summary(examples: pd.DataFrame) -> pd.DataFrame:
    """Per cell, from :func:`per_example`: n_examples, n_flip (examples on which the replicas do
    not all agree), share_flip, n_always_wrong and n_sometimes_wrong (0 < frac_correct < 1)."""
    columns = CELL + ["n_replicas", "n_examples", "n_flip", "share_flip", "n_always_wrong", "n_sometimes_wrong"]
    if examples.empty:
        return _frame([], columns)
    out = examples.groupby(CELL, as_index=False).agg(
        n_replicas=("n_replicas", "max"),
        n_examples=("example", "size"),
        n_flip=("flips", "sum"),
        n_always_wrong=("frac_correct", lambda s: int((s == 0).sum())),
        n_sometimes_wrong=("frac_correct", lambda s: int(((s > 0) & (s < 1)).sum())),
    )
    out["n_flip"] = out["n_flip"].astype(np.int64)
    out["share_flip"] = out["n_flip"] / out["n_examples"]
    return _sorted(out[columns])


def distribution_variance(runs: store.Runs) -> pd.DataFrame:
    """Per cell: Jordan's (ICLR 2024) split of the variance of test accuracy
    (``metrics.distribution_variance``): observed_var, predicted_var (what independent
    per-example coin flips would give: finite-test-set noise), distribution_var (the excess times
    N/(N-1), NOT clipped: a negative estimate is reported as such, and flagged in ``negative``),
    their square roots as ``*_std`` (in accuracy units, comparable with acc_std; a negative
    distribution_var gives a negative ``distribution_std``, -sqrt(-var), so the sign survives)
    and ratio = observed_var / predicted_var (about 1 in Jordan's experiments). Intervals and the
    direct measurement on extra test sets: :func:`variance_direct`."""
    columns = CELL + [
        "n_replicas",
        "n_examples",
        "observed_var",
        "predicted_var",
        "distribution_var",
        "distribution_var_raw",
        "negative",
        "observed_std",
        "predicted_std",
        "distribution_std",
        "ratio",
    ]
    rows = []
    for cell in runs.iter_cells():
        if cell.preds.shape[0] < 2:
            continue
        d = metrics.distribution_variance(cell.preds, cell.labels)
        rows.append(
            {
                **cell.key,
                **d,
                "observed_std": math.sqrt(d["observed_var"]),
                "predicted_std": math.sqrt(d["predicted_var"]),
                "distribution_std": math.copysign(math.sqrt(abs(d["distribution_var"])), d["distribution_var"]),
                "ratio": d["observed_var"] / d["predicted_var"] if d["predicted_var"] > 0 else float("nan"),
            }
        )
    return _sorted(_frame(rows, columns))


# ----------------------------------------------------------------------------- spreads against independent examples
# What the chapters on classes and subgroups show beside spread_null_tests: the null of each
# group, and the subgroup family (rare/common ratio, rare and common spreads). Placed before the
# "decided by tests" section: cell and n are passed, not defaulted to names defined below it.
NULL_GROUP_COLUMNS = CELL + [
    "group",
    "class",
    "attribute",
    "rare",
    "n_examples",
    "n_replicas",
    "sd",
    "null_median",
    "null_lo",
    "null_hi",
    "excess",
]
# stats.independent_null's keys under the test-frame columns (and the null columns) they fill
_NULL_KEYS = {
    "observed": "observed",
    "effect": "excess",
    "effect_lo": "excess_low",
    "effect_hi": "excess_high",
    "n_a": "n_replicas",
    "n_b": "n_examples",
    "pvalue": "pvalue",
    "null_median": "null_median",
    "null_lo": "null_low",
    "null_hi": "null_high",
    "ratio": "ratio",
    "ratio_lo": "ratio_low",
    "ratio_hi": "ratio_high",
}


def _setting_correct(runs: store.Runs, cell: dict, settings: Iterable[str]) -> Iterable[tuple[str, store.Cell]]:
    """(setting, cell) of ``cell``'s settings among ``settings`` that have 3 or more replicas."""
    cells = _main_cells(runs, cell)
    for setting in settings:
        one = cells.get(setting)
        if one is not None and one.preds.shape[0] >= 3:
            yield setting, one


def rare_subgroups(labels, groups, rare_share: float = 0.5) -> set[tuple[int, int]]:
    """The (label, attribute) subgroups that hold under ``rare_share`` of their class's examples in
    ``labels``/``groups``: pass the TRAINING split's, where a subgroup is rare by design (a test set
    may hold every subgroup in equal shares, as mnist1d_groups' does)."""
    frame = pd.DataFrame({"label": np.asarray(labels), "group": np.asarray(groups)})
    counts = frame.value_counts().rename("n").reset_index()
    share = counts["n"] / counts.groupby("label")["n"].transform("sum")
    return {(int(y), int(g)) for y, g in zip(counts["label"][share < rare_share], counts["group"][share < rare_share])}


def _rare_codes(one: store.Cell, rare: set[tuple[int, int]] | None, rare_share: float):
    """(codes, rare per sorted code, width) of a cell's (label, attribute) subgroups: rare as in
    ``rare`` where given, else by the test set's shares (:func:`_subgroup_codes`)."""
    width = int(one.groups.max()) + 1
    codes, by_share = _subgroup_codes(one.labels, one.groups, rare_share)
    if rare is None:
        return codes, by_share, width
    return codes, np.array([(int(c) // width, int(c) % width) in rare for c in np.unique(codes)]), width


def spread_null_groups(
    runs: store.Runs,
    cell: dict,
    *,
    settings: Iterable[str] = ("ALGO",),
    by_subgroup: bool = False,
    rare: set[tuple[int, int]] | None = None,
    rare_share: float = 0.5,
    n: int = stats.N_SIM,
    seed: int = SEED,
) -> pd.DataFrame:
    """Each group's accuracy SD across replicas beside the independent-examples null of that group
    (``stats.independent_null``'s per-group median and central 95 % range), per setting of
    ``cell`` with 3 or more replicas. Groups are the classes, or with ``by_subgroup`` the (label,
    attribute) subgroups (a subgroup's accuracy SD is its FNR's SD), flagged ``rare`` when in
    ``rare`` (:func:`rare_subgroups` of the training split), else when under ``rare_share`` of its
    class's test examples; cells without a group attribute give no subgroup rows. With the same
    ``n`` and ``seed`` the per-class null is the one :func:`spread_null_tests` tests against.
    ``excess`` = sd - null median."""
    rows = []
    for _, one in _setting_correct(runs, cell, settings):
        correct = (one.preds == one.labels).astype(np.int8)
        if not by_subgroup:
            codes, flags, width = one.labels, None, None
        elif not one.has_groups:
            continue
        else:
            codes, flags, width = _rare_codes(one, rare, rare_share)
        out = stats.independent_null(correct, codes, "mean", n_sim=n, n_boot=2, seed=seed)["groups"]
        for k, group in enumerate(out["group"]):
            rows.append(
                {
                    **one.key,
                    "group": int(group),
                    "class": int(group) if width is None else int(group) // width,
                    "attribute": None if width is None else int(group) % width,
                    "rare": None if flags is None else bool(flags[k]),
                    "n_examples": int(out["n"][k]),
                    "n_replicas": one.preds.shape[0],
                    "sd": float(out["sd"][k]),
                    "null_median": float(out["null_median"][k]),
                    "null_lo": float(out["null_low"][k]),
                    "null_hi": float(out["null_high"][k]),
                    "excess": float(out["sd"][k] - out["null_median"][k]),
                }
            )
    return _frame(rows, NULL_GROUP_COLUMNS)


# (name prefix, statistic, what it summarises) of each family, per setting
CLASS_TESTS = (
    ("class_max", "max", "largest per-class accuracy SD"),
    ("class_ratio", "max_ratio", "largest per-class accuracy SD / top-1 accuracy SD"),
)
SUBGROUP_TESTS = (
    ("subgroup_ratio", "rare_common_ratio", "mean FNR SD of rare / of common subgroups"),
    ("subgroup_rare", "mean", "mean FNR SD of the rare subgroups"),
    ("subgroup_common", "mean", "mean FNR SD of the common subgroups"),
)
_NULL_EXTRA = ["null_median", "null_lo", "null_hi", "ratio", "ratio_lo", "ratio_hi"]


def _null_row(family: str, prefix: str, setting: str, what: str, out: dict, n: int) -> dict:
    return {
        "family": family,
        "name": f"{prefix}_{_slug(setting)}",
        "a": setting,
        "b": "independent examples",
        "test": f"independent-examples null ({n} simulations)",
        "statistic": what,
        **{column: out[key] for column, key in _NULL_KEYS.items()},
    }


def _null_frame(rows: list[dict]) -> pd.DataFrame:
    """TEST_COLUMNS with Holm across the rows, then the null's columns (_NULL_EXTRA)."""
    extra = pd.DataFrame([{k: r[k] for k in _NULL_EXTRA} for r in rows], columns=_NULL_EXTRA)
    return pd.concat([_tests_frame(rows), extra], axis=1)


def class_null_tests(
    runs: store.Runs, cell: dict, *, settings: Iterable[str] = ("ALGO",), n: int = stats.N_SIM, seed: int = SEED
) -> pd.DataFrame:
    """The per-class family of ``cell`` against the independent-examples null, per setting with 3
    or more replicas: the largest per-class accuracy SD (``class_max_<setting>``: do classes
    move more than their own examples, flipping independently, make them?) and that over the SD
    of top-1 accuracy (``class_ratio_<setting>``: the row :func:`spread_null_tests` computes).
    Effect: observed - null median with its interval; p one-sided; Holm across the family
    (family ``class``); columns as :func:`subgroup_null_tests`."""
    rows = []
    for setting, one in _setting_correct(runs, cell, settings):
        correct = (one.preds == one.labels).astype(np.int8)
        for prefix, statistic, what in CLASS_TESTS:
            out = stats.independent_null(correct, one.labels, statistic, n_sim=n, n_boot=n, seed=seed)
            rows.append(_null_row("class", prefix, setting, what, out, n))
    return _null_frame(rows)


def subgroup_null_tests(
    runs: store.Runs,
    cell: dict,
    *,
    settings: Iterable[str] = ("ALGO",),
    rare: set[tuple[int, int]] | None = None,
    rare_share: float = 0.5,
    n: int = stats.N_SIM,
    seed: int = SEED,
) -> pd.DataFrame:
    """The subgroup family of ``cell`` (a dataset with a group attribute) against the
    independent-examples null, per setting with 3 or more replicas (rare subgroups: ``rare``,
    else by ``rare_share`` as in :func:`spread_null_groups`): the rare/common ratio of mean
    FNR SDs (``subgroup_ratio_<setting>``), the mean FNR SD of the rare subgroups
    (``subgroup_rare_<setting>``) and of the common ones (``subgroup_common_<setting>``), each
    from ``stats.independent_null`` on its own subgroups' examples. Effect: observed - null
    median, with its interval; p one-sided (observed at least as large); Holm across the family
    (family ``subgroup``). Extra columns: null_median, null_lo, null_hi, ratio, ratio_lo,
    ratio_hi. ``n_a`` replicas, ``n_b`` test examples in the subgroups tested."""
    rows = []
    for setting, one in _setting_correct(runs, cell, settings):
        if not one.has_groups:
            continue
        codes, flags, _ = _rare_codes(one, rare, rare_share)
        if flags.all() or not flags.any():
            continue
        correct = (one.preds == one.labels).astype(np.int8)
        rare_example = np.isin(codes, np.unique(codes)[flags])
        for (prefix, statistic, what), mask in zip(
            SUBGROUP_TESTS, (np.ones(codes.size, dtype=bool), rare_example, ~rare_example)
        ):
            kw = {"rare": flags} if statistic == "rare_common_ratio" else {}
            out = stats.independent_null(correct[:, mask], codes[mask], statistic, n_sim=n, n_boot=n, seed=seed, **kw)
            rows.append(_null_row("subgroup", prefix, setting, what, out, n))
    return _null_frame(rows)


# ----------------------------------------------------------------------------- hardware
def hardware_compare(runs: store.Runs, weights: bool = False) -> pd.DataFrame:
    """Churn between hardware labels against churn within each, for every (dataset, model,
    setting) stored under two or more hardware labels, one row per pair of labels (a, b).

    ``churn_matched``: the mean over replica ids k present under both labels of the churn between
    replica k on a and replica k on b. Replicas k share their seeds, so on deterministic kernels
    this is the pure tooling effect of the hardware (e.g. the CPU thread count).
    ``churn_cross``: the mean churn over every pair (i on a, j on b), ``churn_within_a`` /
    ``churn_within_b``: the usual churn inside each label (NaN below 2 replicas).
    ``n_identical``: matched pairs with equal weights and predictions hashes.
    ``l2_matched``/``l2_within_a``: the same for the final weights (with ``weights``).
    Also the mean and std of top-1 accuracy under each label.
    """
    columns = [
        "dataset",
        "model",
        "setting",
        "hardware_a",
        "hardware_b",
        "n_a",
        "n_b",
        "n_matched",
        "n_identical",
        "churn_matched",
        "churn_cross",
        "churn_within_a",
        "churn_within_b",
        "acc_mean_a",
        "acc_mean_b",
        "acc_std_a",
        "acc_std_b",
        "l2_matched",
        "l2_within_a",
        "l2_within_b",
    ]
    by_base: dict[tuple, dict[str, store.Cell]] = {}
    for cell in runs.iter_cells():
        base = (cell.key["dataset"], cell.key["model"], cell.key["setting"])
        by_base.setdefault(base, {})[cell.key["hardware"]] = cell
    rows = []
    nan = float("nan")
    for (ds, model, setting), cells in sorted(by_base.items()):
        for ha, hb in itertools.combinations(sorted(cells), 2):
            pa, ya, ra = cells[ha].preds, cells[ha].labels, cells[ha].replica_ids
            pb, yb, rb = cells[hb].preds, cells[hb].labels, cells[hb].replica_ids
            if pa.shape[1] != pb.shape[1] or not np.array_equal(ya, yb):
                continue  # not the same test set: nothing to compare example by example
            matched = sorted(set(ra) & set(rb))
            both = np.vstack([pa, pb])
            d = metrics.pairwise_churn(both)
            cross = float(d[: len(ra), len(ra) :].mean())
            churn_m = [metrics.churn(np.vstack([pa[ra.index(k)], pb[rb.index(k)]])) for k in matched]
            reps_a, reps_b = cells[ha].replicas.set_index("replica"), cells[hb].replicas.set_index("replica")
            same = [
                (reps_a.at[k, "weights_hash"] == reps_b.at[k, "weights_hash"])
                and (reps_a.at[k, "predictions_hash"] == reps_b.at[k, "predictions_hash"])
                for k in matched
            ]
            acc_a, acc_b = metrics.accuracy_summary(pa, ya), metrics.accuracy_summary(pb, yb)
            row = {
                "dataset": ds,
                "model": model,
                "setting": setting,
                "hardware_a": ha,
                "hardware_b": hb,
                "n_a": len(ra),
                "n_b": len(rb),
                "n_matched": len(matched),
                "n_identical": int(sum(same)),
                "churn_matched": float(np.mean(churn_m)) if churn_m else nan,
                "churn_cross": cross,
                "churn_within_a": metrics.churn(pa) if len(ra) >= 2 else nan,
                "churn_within_b": metrics.churn(pb) if len(rb) >= 2 else nan,
                "acc_mean_a": acc_a["mean"],
                "acc_mean_b": acc_b["mean"],
                "acc_std_a": _acc_std(pa, ya),
                "acc_std_b": _acc_std(pb, yb),
                "l2_matched": nan,
                "l2_within_a": nan,
                "l2_within_b": nan,
            }
            if weights:
                wa, wb = _weights(reps_a.loc[ra, "path"]), _weights(reps_b.loc[rb, "path"])
                l2 = [metrics.mean_pairwise_l2([wa[ra.index(k)], wb[rb.index(k)]]) for k in matched]
                row.update(
                    l2_matched=float(np.mean(l2)) if l2 else nan,
                    l2_within_a=metrics.mean_pairwise_l2(wa) if len(wa) >= 2 else nan,
                    l2_within_b=metrics.mean_pairwise_l2(wb) if len(wb) >= 2 else nan,
                )
            rows.append(row)
    return _sorted(_frame(rows, columns), ["hardware_a", "hardware_b"])


# ----------------------------------------------------------------------------- chapter parameters
# The forms a hardware label takes (environment.hardware_label): the CPU at t threads or a GPU,
# either with an ATen CPU capability suffix. A well-formed label the store lacks is missing data.
_HARDWARE_LABEL = re.compile(r"^(cpu-[1-9][0-9]*t|cuda-[a-z0-9]+(-[a-z0-9]+)*)(-(avx2|avx512))?$")


def _known(key: str, value: str) -> bool:
    """Whether the package knows ``value`` as a ``key`` (a name it could have trained)."""
    if key == "setting":
        return value in noise.SETTINGS
    if key == "dataset":
        return value in data.LOADERS
    if key == "model":
        return value in models.MODELS
    return bool(_HARDWARE_LABEL.match(value))


def held(runs_root) -> pd.DataFrame:
    """What the run store at ``runs_root`` holds, from its folders alone (no file is read): one
    row per cell (hardware, dataset, model, setting) with ``replicas``, the replica folders that
    hold a manifest (written last, so: complete ones; damaged ones count until load_runs reads
    them). Cheap on any store, unlike load_runs, which reads every replica's predictions."""
    rows = []
    for path in store.iter_replica_dirs(runs_root):
        if (path / store.MANIFEST).is_file():
            rows.append(dict(zip(CELL, path.parts[-5:-1])))
    cells = pd.DataFrame(rows, columns=CELL)
    return _sorted(cells.groupby(CELL, as_index=False).size().rename(columns={"size": "replicas"}))


def check_selection(runs_root, **wanted) -> None:
    """Check an analysis chapter's parameters against what the run store at ``runs_root`` holds
    (:func:`held`), before any work: ``wanted`` maps hardware, dataset, model or setting to a
    name or a list of names (None: not checked).

    A name the store holds passes. A name it lacks raises ValueError naming the parameter and the
    value and listing what the store holds, unless the package knows the name (a setting of
    ``noise.SETTINGS``, a dataset of ``data.LOADERS``, a model of ``models.MODELS``, a
    well-formed hardware label such as ``cpu-8t``): then the store simply lacks those runs, and
    the chapter shows them as missing. An empty store is not checked (there is nothing to list;
    the chapter says the runs are missing). Each key is checked on its own, not their
    combinations: a chapter names what it misses per cell."""
    unknown = set(wanted) - set(CELL)
    if unknown:
        raise ValueError(f"unknown selection key(s) {sorted(unknown)}; valid keys: {', '.join(CELL)}")
    cells = held(runs_root)
    if cells.empty:
        return
    for key, value in wanted.items():
        if value is None:
            continue
        names = sorted(cells[key].unique())
        for v in [value] if isinstance(value, str) else list(value):
            if v not in names and not (isinstance(v, str) and _known(key, v)):
                raise ValueError(f"{key} {v!r} is not in the run store, which holds: {', '.join(names)}")


def identical_tooling_warnings(runs: store.Runs) -> list[str]:
    """One warning per cell whose replicas should differ through the tooling alone but are all
    bit-identical (equal weights hashes) on CUDA: a setting with non-deterministic kernels that
    varies no algorithmic source (IMPL), two replicas or more, device cuda. There the tooling varied
    nothing: the kernels ran deterministically after all, or the replicas shared a process (and
    replica 0's autotuned algorithms). On the CPU such replicas are identical by design (its kernels
    are deterministic at a fixed thread count): not warned. Each message names the cell, its replica
    count, how many distinct kernel sets its replicas recorded and whether they had a process each."""
    r = runs.replicas
    if r.empty or "device" not in r.columns:
        return []
    tooling_only = ~r["deterministic"].astype(bool) & ~r["perturb_ulp"].astype(bool) & (r["varied"].map(len) == 0)
    on_cuda = r["device"].astype(str).str.startswith("cuda")
    warnings = []
    for key, cell in r[tooling_only & on_cuda].groupby(CELL, sort=True):
        if len(cell) < 2 or cell["weights_hash"].nunique() != 1:
            continue
        kernels = cell["kernels_hash"].dropna().nunique() if "kernels_hash" in cell else 0
        processes = sorted(cell["process"].dropna().unique()) if "process" in cell else []
        warnings.append(
            f"{'/'.join(key)}: its {len(cell)} replicas are bit-identical on CUDA although its kernels are "
            f"non-deterministic: the tooling varied nothing here ({kernels or 'no'} distinct kernel set(s) recorded; "
            f"process: {', '.join(processes) or 'not recorded'})"
        )
    return warnings


def load_settings(runs_root, settings: Iterable[str], **filters) -> store.Runs:
    """One view of the replicas of ``settings`` (and ``filters``: hardware, dataset, model) read
    with one ``store.load_runs`` per setting, so that only their folders are read: a chapter
    that needs three settings of a store of 800 replicas reads its 250."""
    parts = [store.load_runs(runs_root, setting=s, **filters) for s in dict.fromkeys(settings)]
    frames = [
        pd.concat([getattr(p, name) for p in parts if len(getattr(p, name))] or [getattr(parts[0], name)])
        for name in ("replicas", "predictions", "history")
    ]
    problems = [x for p in parts for x in p.problems]
    return store.Runs(*(f.sort_values(store.KEYS, ignore_index=True, kind="mergesort") for f in frames), problems)


# What load_summary reads from each manifest: the keys of each of its sections (None: its top
# level), the columns of load_runs' ``replicas`` that runs_table and the training curves need.
_SUMMARY_FIELDS = {
    None: ("hardware", "weights_hash", "predictions_hash"),
    "spec": ("dataset", "model", "setting", "replica", "epochs", "threads", "device", "precision"),
    "final": ("test_accuracy",),
    "timings": ("train_seconds",),
    "environment": ("git_commit",),
    "setting": ("varied", "deterministic", "perturb_ulp"),
}


def load_summary(runs_root, verify: bool = True) -> store.Runs:
    """The run store without its predictions, for the runs chapter: a ``store.Runs`` whose
    ``replicas`` holds, per complete replica, its ``path`` and the manifest fields of
    ``_SUMMARY_FIELDS`` (named and typed as in ``store.load_runs``), whose ``history`` is every
    replica's training history, whose ``predictions`` is empty, and whose ``problems`` lists the
    replica folders load_runs would skip with its reasons (``store.read_manifest``: manifest
    missing or malformed, a file missing or, with ``verify``, failing its checksum).
    load_runs also reads each replica's test predictions (10,000 rows on MNIST-1D) into one frame:
    most of its time on a store of ~800 replicas, and nothing a per-cell summary needs."""
    rows, hists, problems = [], [], []
    for path in store.iter_replica_dirs(runs_root):
        try:
            m = store.read_manifest(path, verify)
        except ValueError as e:
            problems.append((str(path), str(e)))
            continue
        row = {key: (m if part is None else m[part]).get(key) for part, keys in _SUMMARY_FIELDS.items() for key in keys}
        row.update(varied=tuple(sorted(row["varied"])), deterministic=bool(row["deterministic"]), path=str(path))
        row["perturb_ulp"] = bool(row["perturb_ulp"])
        rows.append(row)
        hists.append(pd.read_parquet(path / "history.parquet").assign(**{k: row[k] for k in store.KEYS}))
    columns = store.KEYS + [c for keys in _SUMMARY_FIELDS.values() for c in keys if c not in store.KEYS] + ["path"]
    replicas = pd.DataFrame(rows, columns=columns).sort_values(store.KEYS, ignore_index=True)
    history = pd.concat(hists, ignore_index=True) if hists else pd.DataFrame(columns=store.KEYS)
    history = history[store.KEYS + [c for c in history.columns if c not in store.KEYS]]
    history = history.sort_values(store.KEYS + (["epoch"] if "epoch" in history else []), ignore_index=True)
    return store.Runs(replicas, pd.DataFrame(columns=store.KEYS), history, problems)


# ----------------------------------------------------------------------------- CPU tooling
# 24_hardware's four kinds of churn, in the chart's and the tests' order: a tooling configuration
# against the reference one with CONTROL's seeds and with ALGO's (replica k against replica k),
# a one-ULP poke against CONTROL (same reference), and two ALGO replicas of different seeds.
TOOLING_GROUPS = ("configuration, CONTROL's seeds", "configuration, ALGO's seeds", "one-ULP poke", "ALGO seeds")
TOOLING_COLUMNS = ["group", "hardware", "replica", "other", "churn", "identical"]


def _same_bits(a: pd.Series, b: pd.Series) -> bool:
    """Two replicas' rows (of Runs.replicas) hold the same weights and predictions."""
    return bool(a["weights_hash"] == b["weights_hash"] and a["predictions_hash"] == b["predictions_hash"])


def _tooling_row(group: str, a: store.Cell, i: int, b: store.Cell, j: int) -> dict:
    """The churn between replica ``i`` of cell a and replica ``j`` of cell b (replica ids)."""
    ra, rb = a.replica_ids.index(i), b.replica_ids.index(j)
    return {
        "group": group,
        "hardware": a.key["hardware"],
        "replica": i,
        "other": f"{b.key['hardware']}/{b.key['setting']}/{j}",
        "churn": metrics.churn(np.vstack([a.preds[ra], b.preds[rb]])),
        "identical": _same_bits(a.replicas.iloc[ra], b.replicas.iloc[rb]),
    }


def tooling_churn(
    runs: store.Runs,
    *,
    dataset: str,
    model: str,
    reference: str = "cpu-1t",
    control: str = "CONTROL",
    algo: str = "ALGO",
    ulp: str = "ULP",
) -> pd.DataFrame:
    """Every churn value of :data:`TOOLING_GROUPS` on (dataset, model), one row each:

    * ``configuration, CONTROL's seeds``: each hardware label other than ``reference`` against
      ``reference``, CONTROL's lowest replica id on both (CONTROL's replicas repeat one seed set,
      so more replicas would repeat the value; their bit identity is :func:`identity`'s);
    * ``configuration, ALGO's seeds``: ALGO's replica k on each other label against replica k on
      ``reference`` (same seeds: the tooling alone differs), every k both labels hold;
    * ``one-ULP poke``: each ULP replica on ``reference`` against CONTROL's lowest replica there;
    * ``ALGO seeds``: disjoint pairs of ALGO replicas on ``reference`` (ids in ascending order,
      (0, 1), (2, 3), ...): every seed differs, and no replica is in two pairs.

    ``other`` names the replica compared against (hardware/setting/id), ``identical`` whether the
    two hold the same weights and predictions. The first three groups perturb one reference
    model each (the cpu-1t model of the same seeds), the last compares independent replicas.
    A group whose cells are absent has no rows."""
    cells = {
        (c.key["hardware"], c.key["setting"]): c
        for c in runs.iter_cells()
        if c.key["dataset"] == dataset and c.key["model"] == model
    }
    rows = []
    ref_control, ref_algo = cells.get((reference, control)), cells.get((reference, algo))
    others = sorted({hw for hw, _ in cells} - {reference})
    for group, setting, ref in ((TOOLING_GROUPS[0], control, ref_control), (TOOLING_GROUPS[1], algo, ref_algo)):
        for hw in others if ref is not None else []:
            cell = cells.get((hw, setting))
            matched = sorted(set(cell.replica_ids) & set(ref.replica_ids)) if cell is not None else []
            for k in matched[:1] if setting == control else matched:
                rows.append(_tooling_row(group, cell, k, ref, k))
    poke = cells.get((reference, ulp))
    if poke is not None and ref_control is not None:
        first = ref_control.replica_ids[0]
        rows += [_tooling_row(TOOLING_GROUPS[2], poke, r, ref_control, first) for r in poke.replica_ids]
    if ref_algo is not None:
        ids = ref_algo.replica_ids
        rows += [_tooling_row(TOOLING_GROUPS[3], ref_algo, i, ref_algo, j) for i, j in zip(ids[::2], ids[1::2])]
    return _frame(rows, TOOLING_COLUMNS)


# (name, group a, group b) of tooling_tests, in the family's order
TOOLING_TESTS = (
    ("tooling_control_vs_ulp", TOOLING_GROUPS[0], TOOLING_GROUPS[2]),
    ("tooling_algo_vs_ulp", TOOLING_GROUPS[1], TOOLING_GROUPS[2]),
    ("tooling_control_vs_seeds", TOOLING_GROUPS[0], TOOLING_GROUPS[3]),
    ("tooling_algo_vs_seeds", TOOLING_GROUPS[1], TOOLING_GROUPS[3]),
)


def tooling_tests(churn: pd.DataFrame, n: int = stats.N_PERM, seed: int = SEED) -> pd.DataFrame:
    """Does a tooling change act like a one-ULP poke, and does it rival the algorithmic seeds?
    For each comparison of TOOLING_TESTS over :func:`tooling_churn`'s values: the permutation
    test of the difference in mean churn (group a - group b) and its two-sample BCa interval
    (``stats.difference_interval``), Holm across the family ``tooling``. The permutation test is
    ``stats.pair_permutation_test`` on d_ij = (x_i + x_j) / 2 with a zero diagonal: the mean of d
    over pairs of distinct members of a group is the group's mean of x, so its statistic is the
    difference in means. Comparisons with fewer than 2 values on a side give no row."""
    rows = []
    for name, a, b in TOOLING_TESTS:
        xa = churn.loc[churn["group"] == a, "churn"].to_numpy(dtype=np.float64)
        xb = churn.loc[churn["group"] == b, "churn"].to_numpy(dtype=np.float64)
        if min(len(xa), len(xb)) < 2:
            continue
        x = np.concatenate([xa, xb])
        d = (x[:, None] + x[None, :]) / 2
        np.fill_diagonal(d, 0.0)
        t = stats.pair_permutation_test(d, len(xa), "difference in mean churn", n_perm=n, seed=seed)
        iv = stats.difference_interval(xa, xb, "mean", n_boot=n, seed=seed)
        rows.append(_test_row("tooling", name, a, b, t, iv))
    return _tests_frame(rows)


def tooling_times(runs: store.Runs) -> pd.DataFrame:
    """Recorded training time per hardware label: one row per label with its threads (the most
    any of its replicas used), the machine's core count (``cpu_count`` of a manifest), replicas
    and the median, min and max of ``train_seconds`` per replica (each setting's replicas train
    alike; all are pooled)."""
    columns = ["hardware", "threads", "cpu_count", "replicas", "seconds_median", "seconds_min", "seconds_max"]
    r = runs.replicas
    if r.empty:
        return _frame([], columns)
    rows = []
    for hw, reps in r.groupby("hardware", sort=True):
        env = store.read_manifest(Path(reps["path"].iloc[0]), verify=False)["environment"]
        s = reps["train_seconds"].astype(np.float64)
        threads = reps["threads"].dropna()
        rows.append(
            {
                "hardware": hw,
                "threads": int(threads.max()) if len(threads) else None,
                "cpu_count": env.get("cpu_count"),
                "replicas": len(reps),
                "seconds_median": float(s.median()),
                "seconds_min": float(s.min()),
                "seconds_max": float(s.max()),
            }
        )
    return _frame(rows, columns)


# ----------------------------------------------------------------------------- the runs
def runs_table(runs: store.Runs) -> pd.DataFrame:
    """One row per cell, for the runs appendix: replicas, epochs, threads, device, precision,
    final test accuracy mean/min/max, the mean recorded ``train_seconds`` per replica, the git
    commit(s) the replicas record, ``expects_identical`` (the setting as its first replica's
    manifest records it promises bit-identical replicas) and ``identical``: whether all the
    cell's replicas hold the same weights and predictions (one weights hash and one predictions
    hash; None below 2 replicas, where there is nothing to compare). Reads no predictions."""
    columns = CELL + ["replicas", "epochs", "threads", "device", "precision", "acc_mean", "acc_min", "acc_max"]
    columns += ["train_seconds", "git_commit", "expects_identical", "identical"]
    r = runs.replicas
    if r.empty or "epochs" not in r.columns:
        return _frame([], columns)

    def values(s: pd.Series) -> str:
        return ", ".join(str(v) for v in sorted(s.dropna().unique(), key=str)) or "-"

    out = r.groupby(CELL, as_index=False).agg(
        replicas=("replica", "size"),
        epochs=("epochs", values),
        threads=("threads", values),
        device=("device", values),
        precision=("precision", values),
        acc_mean=("test_accuracy", "mean"),
        acc_min=("test_accuracy", "min"),
        acc_max=("test_accuracy", "max"),
        train_seconds=("train_seconds", "mean"),
        git_commit=("git_commit", values),
        n_weights=("weights_hash", "nunique"),
        n_predictions=("predictions_hash", "nunique"),
    )
    first = r.groupby(CELL, as_index=False)[store.MEANING].first()
    out["expects_identical"] = [
        noise.NoiseSetting(name, frozenset(v), bool(d), bool(u)).expects_identical
        for name, v, d, u in zip(first["setting"], *(first[c] for c in store.MEANING))
    ]
    same = (out["n_weights"] == 1) & (out["n_predictions"] == 1)
    out["identical"] = [bool(v) if n >= 2 else None for v, n in zip(same, out["replicas"])]
    return _sorted(out[columns])


def training_curves(runs: store.Runs) -> pd.DataFrame:
    """Per cell and epoch: the mean test accuracy over the cell's replicas (``test_accuracy``) and
    how many replicas reached that epoch (``replicas``). Empty without training histories."""
    columns = CELL + ["epoch", "test_accuracy", "replicas"]
    h = runs.history
    if h.empty or "test_accuracy" not in h.columns:
        return _frame([], columns)
    return (
        h.groupby(CELL + ["epoch"], as_index=False).agg(
            test_accuracy=("test_accuracy", "mean"), replicas=("replica", "nunique")
        )
    )[columns]


# ----------------------------------------------------------------------------- missing data
def missing(
    runs: store.Runs, *, hardware: str, dataset: str, model: str, settings: Iterable[str], min_replicas: int = 2
) -> list[str]:
    """What a chapter needs and the store lacks: one line per cell of ``settings`` on
    (hardware, dataset, model) with fewer than ``min_replicas`` replicas (empty when all there)."""
    lines = []
    for s in settings:
        n = len(runs.select(hardware=hardware, dataset=dataset, model=model, setting=s).replicas)
        if n < min_replicas:
            lines.append(f"{hardware}/{dataset}/{model}/{s}: {n} replica(s), needs at least {min_replicas}")
    return lines


def missing_note(lines: list[str], runs_root: str) -> str:
    """A Markdown note for a chapter whose runs are (partly) absent; empty string if none are."""
    if not lines:
        return ""
    items = "\n".join(f"- `{line}`" for line in lines)
    return (
        f"**Runs missing.** The run store `{runs_root}` lacks runs this chapter needs:\n\n{items}\n\n"
        "Figures and numbers that need them are left empty or read *n/a*. Fill the store with "
        "`make book` (it runs `nnrandomness run plans/default.yaml`), or point the chapter's "
        "`runs_root` parameter at a store that has them, then re-execute the chapter."
    )


# ----------------------------------------------------------------------------- decided by tests
# Each function below returns one row per comparison of one chapter's family, in the one schema
# findings.claims turns into worded claims: the comparison (a, b), the test and its statistic,
# the effect with its 95 % interval, the sample sizes, the p-value and the p-value adjusted
# across the family with Holm. Tests and intervals are stats' (permutation, BCa, null model),
# seeded with SEED so that a chapter re-executed on the same runs gives the same numbers.
TEST_COLUMNS = [
    "family",
    "name",
    "a",
    "b",
    "test",
    "statistic",
    "observed",
    "effect",
    "effect_lo",
    "effect_hi",
    "n_a",
    "n_b",
    "pvalue",
    "p_adjusted",
]
SINGLE_SOURCES = ("INIT", "ORDER", "AUG", "DROPOUT")
# The study's main (hardware, dataset, model): where the claims' families are tested by default.
MAIN_CELL = {"hardware": "cpu-1t", "dataset": "mnist1d", "model": "cnn1d"}  # the default study's main cell
TEST_N = stats.N_PERM  # permutations, bootstrap resamples and null simulations per comparison


def _tests_frame(rows: list[dict]) -> pd.DataFrame:
    """The family's rows with Holm-adjusted p-values (NaN p-values, e.g. estimates, stay NaN)."""
    out = _frame(rows, TEST_COLUMNS)
    out["p_adjusted"] = stats.holm(out["pvalue"].to_numpy(dtype=np.float64)) if len(out) else []
    return out


def _main_cells(runs: store.Runs, cell: dict) -> dict[str, store.Cell]:
    """The cells of one (hardware, dataset, model) ``cell`` by setting: filtered from the view's
    cells (built once per view) rather than selected (a new view builds its matrices again)."""
    return {c.key["setting"]: c for c in runs.iter_cells() if all(c.key[k] == v for k, v in cell.items())}


def churn_tests(
    runs: store.Runs,
    cell: dict = MAIN_CELL,
    *,
    reference: str = "ALGO",
    sources: Iterable[str] = SINGLE_SOURCES,
    n: int = TEST_N,
    seed: int = SEED,
) -> pd.DataFrame:
    """Churn of each single source against ``reference`` and of every pair of sources: the
    permutation test of the difference in mean pair churn (``stats.permutation_test``), its
    effect (churn a - churn b) with the two-sample BCa interval over replicas of the pair means
    (``stats.difference_interval``), Holm across the family. Pairs missing a cell (or with fewer
    than 3 replicas on a side) give no row."""
    cells = _main_cells(runs, cell)
    present = [s for s in sources if s in cells]
    pairs = [(s, reference) for s in present if s != reference] + list(itertools.combinations(present, 2))
    rows = []
    for a, b in pairs:
        if b not in cells or min(len(cells[a].preds), len(cells[b].preds)) < 3:
            continue
        rows.append(_churn_row("churn", f"churn_{_slug(a)}_vs_{_slug(b)}", cells[a], cells[b], n, seed))
    return _tests_frame(rows)


def _churn_row(family: str, name: str, a: store.Cell, b: store.Cell, n: int, seed: int) -> dict:
    """Churn of cell a against cell b: one pooled churn matrix serves the permutation test
    (``stats.pair_permutation_test``) and the BCa interval of the difference (its two blocks)."""
    r = len(a.preds)
    d = stats.churn_matrix(np.vstack([a.preds, b.preds]))
    t = stats.pair_permutation_test(d, r, "churn", n_perm=n, seed=seed)
    iv = stats.difference_interval(d[:r, :r], d[r:, r:], pairs=True, n_boot=n, seed=seed)
    return _test_row(family, name, a.key["setting"], b.key["setting"], t, iv)


def _slug(setting: str) -> str:
    return setting.lower().replace("+", "_")


def _test_row(family: str, name: str, a: str, b: str, t: stats.PermutationResult, d: stats.Interval) -> dict:
    return {
        "family": family,
        "name": name,
        "a": a,
        "b": b,
        "test": f"permutation ({t.n_perm} relabellings)",
        "statistic": t.statistic,
        "observed": t.observed,
        "effect": d.estimate,
        "effect_lo": d.low,
        "effect_hi": d.high,
        "n_a": t.n_a,
        "n_b": t.n_b,
        "pvalue": t.pvalue,
    }


def sd_tests(
    runs: store.Runs,
    cell: dict = MAIN_CELL,
    *,
    references: Iterable[str] = ("CONTROL", "ALGO"),
    n: int = TEST_N,
    seed: int = SEED,
) -> pd.DataFrame:
    """The SD of top-1 accuracy of every setting against each of ``references``: the permutation
    test on the log ratio of SDs (each setting centred on its mean first), the effect SD a - SD b
    with its two-sample BCa interval, Holm across the family; plus each side's SD with its
    chi-square and Bonett intervals (``sd_a``, ``sd_a_chi2_lo`` ... ``sd_b_bonett_hi``)."""
    cells = _main_cells(runs, cell)
    acc = {s: metrics.accuracy(c.preds, c.labels) for s, c in cells.items() if len(c.preds) >= 3}
    rows, extra = [], []
    for b in references:
        for a in setting_order(acc):
            if a == b or b not in acc or (b, a) in {(r["a"], r["b"]) for r in rows}:
                continue
            t = stats.permutation_test(acc[a], acc[b], "sd_log_ratio", n_perm=n, seed=seed)
            d = stats.difference_interval(acc[a], acc[b], "sd", n_boot=n, seed=seed)
            rows.append(_test_row("sd", f"sd_{_slug(a)}_vs_{_slug(b)}", a, b, t, d))
            side = {}
            for label, s in (("a", a), ("b", b)):
                side[f"sd_{label}"] = stats.sd_interval(acc[s]).estimate
                for method in ("chi2", "bonett"):
                    iv = stats.sd_interval(acc[s], method=method)
                    side[f"sd_{label}_{method}_lo"], side[f"sd_{label}_{method}_hi"] = iv.low, iv.high
            extra.append(side)
    out = _tests_frame(rows)
    sides = pd.DataFrame(extra, index=out.index) if extra else pd.DataFrame(index=out.index)
    return pd.concat([out, sides], axis=1)


def _subgroup_codes(labels: np.ndarray, groups: np.ndarray, rare_share: float) -> tuple[np.ndarray, np.ndarray]:
    """Each example's (label, attribute) subgroup code, and per code (sorted) whether it is rare:
    under ``rare_share`` of its class's examples, as :func:`subgroups` decides."""
    width = int(groups.max()) + 1
    codes = labels * width + groups
    values, counts = np.unique(codes, return_counts=True)
    per_class = pd.Series(counts).groupby(values // width).transform("sum").to_numpy()
    return codes, counts / per_class < rare_share


def spread_null_tests(
    runs: store.Runs,
    cell: dict = MAIN_CELL,
    *,
    groups_dataset: str = "mnist1d_groups",
    settings: Iterable[str] = ("ALGO",),
    rare_share: float = 0.5,
    n: int = TEST_N,
    seed: int = SEED,
) -> pd.DataFrame:
    """Per-class and subgroup spreads of ``cell`` against the independent-examples null
    (``stats.independent_null``): for each of ``settings``, the largest per-class accuracy SD over
    the top-1 SD on the cell's dataset (``ratio_max`` of :func:`per_class_spread`), and the mean FNR SD of
    rare over common (label, attribute) subgroups on ``groups_dataset`` (``ratio`` of
    ``findings.rare_common_ratio``). The effect is the observed statistic's excess over the null's
    median with its interval; the p-value is one-sided (observed at least as large), Holm across
    the family. Columns beyond TEST_COLUMNS: null_median, null_lo, null_hi, ratio (observed /
    null median), ratio_lo, ratio_hi. ``n_a`` is the replicas, ``n_b`` the test examples."""
    extra_cols = ["null_median", "null_lo", "null_hi", "ratio", "ratio_lo", "ratio_hi"]
    rows = []
    for setting in settings:
        for ds, kind in ((cell["dataset"], "class"), (groups_dataset, "subgroup")):
            one = _main_cells(runs, {**cell, "dataset": ds}).get(setting)
            if one is None or one.preds.shape[0] < 3:
                continue
            correct = (one.preds == one.labels).astype(np.int8)
            if kind == "class":
                out = stats.independent_null(correct, one.labels, "max_ratio", n_sim=n, n_boot=n, seed=seed)
                statistic = "largest per-class accuracy SD / top-1 accuracy SD"
            else:
                if not one.has_groups:
                    continue
                codes, rare = _subgroup_codes(one.labels, one.groups, rare_share)
                if rare.all() or not rare.any():
                    continue
                out = stats.independent_null(
                    correct, codes, "rare_common_ratio", rare=rare, n_sim=n, n_boot=n, seed=seed
                )
                statistic = "mean FNR SD of rare / of common subgroups"
            rows.append(
                {
                    "family": "spread",
                    "name": f"{kind}_spread_{_slug(setting)}",
                    "a": setting,
                    "b": "independent examples",
                    "test": f"independent-examples null ({n} simulations)",
                    "statistic": statistic,
                    "observed": out["observed"],
                    "effect": out["excess"],
                    "effect_lo": out["excess_low"],
                    "effect_hi": out["excess_high"],
                    "n_a": out["n_replicas"],
                    "n_b": out["n_examples"],
                    "pvalue": out["pvalue"],
                    "null_median": out["null_median"],
                    "null_lo": out["null_low"],
                    "null_hi": out["null_high"],
                    "ratio": out["ratio"],
                    "ratio_lo": out["ratio_low"],
                    "ratio_hi": out["ratio_high"],
                }
            )
    base = _tests_frame(rows)
    return pd.concat([base, pd.DataFrame([{k: r[k] for k in extra_cols} for r in rows], columns=extra_cols)], axis=1)


def ulp_tests(
    runs: store.Runs,
    cell: dict = MAIN_CELL,
    *,
    n: int = TEST_N,
    seed: int = SEED,
) -> pd.DataFrame:
    """The one-ULP poke: its churn against ALGO's (permutation test, BCa interval of the
    difference), and the share of ULP replicas whose predictions equal CONTROL's (a replica's row
    equal to CONTROL's first replica's row; CONTROL's replicas are bit-identical) with its
    Clopper-Pearson interval, an estimate (no p-value). Holm across the family's tests."""
    cells = _main_cells(runs, cell)
    rows = []
    if "ULP" in cells and "ALGO" in cells and min(len(cells["ULP"].preds), len(cells["ALGO"].preds)) >= 3:
        rows.append(_churn_row("ulp", "churn_ulp_vs_algo", cells["ULP"], cells["ALGO"], n, seed))
    if "ULP" in cells and "CONTROL" in cells and cells["ULP"].preds.shape[1] == cells["CONTROL"].preds.shape[1]:
        pu, pc = cells["ULP"].preds, cells["CONTROL"].preds
        k = int((pu == pc[0]).all(axis=1).sum())
        iv = stats.clopper_pearson(k, len(pu))
        rows.append(
            {
                "family": "ulp",
                "name": "ulp_returns_to_control",
                "a": "ULP",
                "b": "CONTROL",
                "test": "Clopper-Pearson (estimate)",
                "statistic": "share of ULP replicas with CONTROL's predictions",
                "observed": iv.estimate,
                "effect": iv.estimate,
                "effect_lo": iv.low,
                "effect_hi": iv.high,
                "n_a": len(pu),
                "n_b": len(pc),
                "pvalue": float("nan"),
            }
        )
    return _tests_frame(rows)


def _extra_accuracy(cell: store.Cell) -> tuple[np.ndarray | None, int | None]:
    """(R, K) accuracies on the extra test sets and examples per set, or (None, None) when the
    cell's replicas do not all hold them (a store without the column, or K < 2)."""
    reps = cell.replicas
    if "extra_accuracy" not in reps.columns:
        return None, None
    lists = [np.asarray(v, dtype=np.float64) if v is not None else np.empty(0) for v in reps["extra_accuracy"]]
    sizes = {v.size for v in lists}
    if len(sizes) != 1 or sizes.pop() < 2:
        return None, None
    # load_runs gives one size per set (a list); a scalar is accepted too. One size for every set, or None.
    first = reps["extra_n"].iloc[0] if "extra_n" in reps.columns else None
    sizes = {int(v) for v in np.ravel(first) if pd.notna(v)} if first is not None else set()
    extra_n = sizes.pop() if len(sizes) == 1 else None
    return np.vstack(lists), extra_n


VARIANCE_COLUMNS = CELL + [
    "n_replicas",
    "n_examples",
    "n_sets",
    "n_per_set",
    "jordan_var",
    "jordan_lo",
    "jordan_hi",
    "jordan_negative",
    "direct_var",
    "direct_lo",
    "direct_hi",
    "pooled_var",
    "finite_sample_var",
]


def variance_direct(runs: store.Runs, n: int = TEST_N, seed: int = SEED) -> pd.DataFrame:
    """Per cell (3 or more replicas): variance of accuracy over the data distribution, estimated
    by Jordan's method on the main test set (``stats.jordan_variance``: N/(N-1) correction, not
    clipped; ``jordan_negative`` flags a negative estimate) and MEASURED directly on the K extra
    test sets the replicas were evaluated on (``stats.direct_distribution_variance``: the
    across-replica covariance of accuracies on distinct sets), each with a BCa interval over
    replicas. ``pooled_var`` is the uncorrected variance of the pooled extra accuracy,
    ``finite_sample_var`` the part of it the correction removes. Direct columns are NaN for cells
    without ``extra_accuracy`` (at least 2 sets)."""
    rows = []
    nan = float("nan")
    for cell in runs.iter_cells():
        if cell.preds.shape[0] < 3:
            continue
        correct = (cell.preds == cell.labels).astype(np.int8)
        j = stats.jordan_variance(correct, n_boot=n, seed=seed)
        row = {
            **cell.key,
            "n_replicas": cell.preds.shape[0],
            "n_examples": cell.preds.shape[1],
            "n_sets": 0,
            "n_per_set": None,
            "jordan_var": j.estimate,
            "jordan_lo": j.low,
            "jordan_hi": j.high,
            "jordan_negative": bool(j.estimate < 0),
            **dict.fromkeys(["direct_var", "direct_lo", "direct_hi", "pooled_var", "finite_sample_var"], nan),
        }
        extra, extra_n = _extra_accuracy(cell)
        if extra is not None:
            d = stats.direct_distribution_variance(extra, extra_n, n_boot=n, seed=seed)
            row.update(
                n_sets=d["n_sets"],
                n_per_set=d["n_per_set"],
                direct_var=d["estimate"],
                direct_lo=d["low"],
                direct_hi=d["high"],
                pooled_var=d["pooled_var"],
                finite_sample_var=d["finite_sample_var"],
            )
        rows.append(row)
    return _sorted(_frame(rows, VARIANCE_COLUMNS))


def variance_tests(
    runs: store.Runs, *, settings: Iterable[str] | None = None, n: int = TEST_N, seed: int = SEED
) -> pd.DataFrame:
    """Jordan's estimate against the direct measurement, per cell with extra test sets (of
    ``settings``, default all): a paired bootstrap over replicas of the difference Jordan - direct
    (``stats.jordan_vs_direct``), Holm across the family. ``n_a`` replicas, ``n_b`` extra sets."""
    rows = []
    for cell in runs.iter_cells():
        if settings is not None and cell.key["setting"] not in set(settings):
            continue
        extra, _ = _extra_accuracy(cell)
        if extra is None or cell.preds.shape[0] < 3:
            continue
        d = stats.jordan_vs_direct((cell.preds == cell.labels).astype(np.int8), extra, n_boot=n, seed=seed)
        rows.append(
            {
                "family": "variance",
                "name": f"jordan_vs_direct_{_slug(cell.key['setting'])}_{cell.key['dataset']}_{cell.key['model']}",
                "a": "Jordan (main test set)",
                "b": "direct (extra test sets)",
                "test": f"paired bootstrap ({n} resamples)",
                "statistic": "variance of accuracy over the distribution, Jordan - direct",
                "observed": d["difference"],
                "effect": d["difference"],
                "effect_lo": d["low"],
                "effect_hi": d["high"],
                "n_a": d["n_replicas"],
                "n_b": extra.shape[1],
                "pvalue": d["pvalue"],
            }
        )
    return _tests_frame(rows)


# ----------------------------------------------------------------------------- downloads
# The run store summary the book offers for download: one row per complete replica, read from its
# manifest alone (no predictions), in this column order. Seeds are the per-source seeds the
# replica trained with; git_commit is the commit it ran from and git_commit_date that commit's
# committer date (the provenance of the row: the manifest records no time of its own).
REPLICA_EXPORT_COLUMNS = store.KEYS + [
    "test_accuracy",
    "test_loss",
    "epochs",
    "threads",
    "device",
    "precision",
    "varied",
    "deterministic",
    "perturb_ulp",
    "base_seed",
    "seed_init",
    "seed_order",
    "seed_aug",
    "seed_dropout",
    "seed_perturb",
    "weights_hash",
    "predictions_hash",
    "train_seconds",
    "eval_seconds",
    "torch",
    "cpu_model",
    "gpu_name",
    "git_commit",
    "git_commit_date",
    "path",
]
_SEEDS = ("init", "order", "aug", "dropout", "perturb")


def commit_dates(commits: Iterable[str], repository) -> dict[str, str]:
    """The committer date (ISO 8601, as git prints it) of each commit, looked up in the git
    repository that holds ``repository`` (a folder inside it); a ``+dirty`` suffix is ignored and
    a commit git does not know (or no git at all) maps to ''. One ``git show`` for all commits."""
    import subprocess  # only this lookup runs a program

    shas = sorted({c for c in commits if isinstance(c, str) and c})
    bare = {c: c.removesuffix("+dirty") for c in shas}
    wanted = sorted({b for b in bare.values() if re.fullmatch(r"[0-9a-f]{7,40}", b)})
    found: dict[str, str] = {}
    for sha in wanted:  # one call per commit: git show stops at the first unknown one
        try:
            out = subprocess.run(
                ["git", "show", "-s", "--format=%cI", sha, "--"],
                cwd=repository,
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError):
            break
        if out.returncode == 0 and out.stdout.strip():
            found[sha] = out.stdout.strip().splitlines()[0]
    return {c: found.get(bare[c], "") for c in shas}


def replica_export(runs_root, verify: bool = True, repository=None) -> pd.DataFrame:
    """The run store summary for download: one row per complete replica under ``runs_root``
    (:data:`REPLICA_EXPORT_COLUMNS`), from the manifests (``store.read_manifest``; a damaged or
    incomplete replica is left out, as load_runs leaves it), sorted by hardware, dataset, model,
    setting and replica. ``path`` is the replica folder relative to ``runs_root``; ``varied`` the
    recorded varied sources joined by '+' ('' for none). Commit dates are looked up in the git
    repository holding ``repository`` (default: ``runs_root``; :func:`commit_dates`)."""
    root, rows = Path(runs_root), []
    for path in store.iter_replica_dirs(root):
        try:
            m = store.read_manifest(path, verify)
        except ValueError:
            continue
        spec, env, seeds = m["spec"], m.get("environment") or {}, m.get("seeds") or {}
        rows.append(
            {
                "hardware": m["hardware"],
                **{k: spec.get(k) for k in ("dataset", "model", "setting", "replica")},
                "test_accuracy": m["final"].get("test_accuracy"),
                "test_loss": m["final"].get("test_loss"),
                **{k: spec.get(k) for k in ("epochs", "threads", "device", "precision", "base_seed")},
                "varied": "+".join(sorted(m["setting"].get("varied") or [])),
                "deterministic": bool(m["setting"].get("deterministic")),
                "perturb_ulp": bool(m["setting"].get("perturb_ulp")),
                **{f"seed_{s}": seeds.get(s) for s in _SEEDS},
                "weights_hash": m.get("weights_hash"),
                "predictions_hash": m.get("predictions_hash"),
                "train_seconds": m["timings"].get("train_seconds"),
                "eval_seconds": m["timings"].get("eval_seconds"),
                **{k: env.get(k) for k in ("torch", "cpu_model", "gpu_name", "git_commit")},
                "path": path.relative_to(root).as_posix(),
            }
        )
    out = pd.DataFrame(rows, columns=REPLICA_EXPORT_COLUMNS)
    dates = commit_dates(out["git_commit"].dropna(), repository or (root if root.is_dir() else "."))
    out["git_commit_date"] = out["git_commit"].map(lambda c: dates.get(c, "") if isinstance(c, str) else "")
    for s in _SEEDS:  # 64-bit unsigned seeds: kept exact (a float would round them)
        out[f"seed_{s}"] = pd.array(out[f"seed_{s}"].tolist(), dtype="UInt64")
    for k in ("replica", "epochs", "threads", "base_seed"):
        out[k] = pd.array(out[k].tolist(), dtype="Int64")
    return out.sort_values(store.KEYS, ignore_index=True, kind="mergesort")


def write_export(frame: pd.DataFrame, stem) -> list[Path]:
    """Write ``frame`` as ``<stem>.csv`` and ``<stem>.parquet`` (no index), each whole or absent
    (``files.write_atomic``). Both are byte-stable: the same frame gives the same bytes (CSV with
    '\\n' line ends and Python's shortest float repr; Parquet from pyarrow without timestamps), so
    a committed download is unchanged by re-executing the chapter on the same store. A file whose
    bytes would not change is not rewritten. Returns the two paths."""
    import io  # the files are serialised in memory first, so that a full disk is files' error

    from .files import write_atomic

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    parquet = io.BytesIO()
    frame.to_parquet(parquet, index=False, engine="pyarrow")
    payloads = {
        stem.with_name(stem.name + ".csv"): frame.to_csv(index=False, lineterminator="\n").encode(),
        stem.with_name(stem.name + ".parquet"): parquet.getvalue(),
    }
    for path, payload in payloads.items():
        if not (path.is_file() and path.read_bytes() == payload):
            write_atomic(path, payload, kept=f"the previous {path.name}, if any")
    return list(payloads)


# ----------------------------------------------------------------------------- multi-label heads (CelebA)
MULTILABEL_COLUMNS = [*CELL, "subset", "replicas", "attributes", "fpr_mean", "fpr_sd", "fnr_mean", "fnr_sd"]


def _sd(values: np.ndarray) -> float:
    """SD (ddof=1) over replicas; nan for one replica, exactly 0 when all are equal (no rounding spread)."""
    if len(values) < 2:
        return math.nan
    return 0.0 if np.all(values == values[0]) else float(np.std(values, ddof=1))


def multilabel_rates(runs: store.Runs) -> pd.DataFrame:
    """The paper's CelebA table: per cell of multi-label replicas (their manifests record "labels", the
    names of the bits of `store.pack_bits`), the mean and SD (ddof=1) over replicas of FPR and FNR pooled
    over the attributes (`metrics.pooled_rates`), for all test examples (subset "all") and for each value
    of the group attribute ("group=0", "group=1": not Male, Male for CelebA's default group). Cells whose
    replicas predict class indices are left out. Columns: `MULTILABEL_COLUMNS` (attributes: K)."""
    rows = []
    for cell in runs.iter_cells():
        names = {tuple(n) if n else None for n in cell.replicas["label_names"]}
        if names == {None}:
            continue
        if len(names) != 1:
            raise ValueError(f"the replicas of cell {'/'.join(cell.key.values())} record {len(names)} output lists")
        k = len(names.pop())
        preds = np.stack([store.unpack_bits(row, k) for row in cell.preds])  # (R, N, K)
        rates = metrics.pooled_rates(preds, store.unpack_bits(cell.labels, k), cell.groups if cell.has_groups else None)
        for subset, part in rates.groupby("subset", sort=False):
            fpr, fnr = part["fpr"].to_numpy(), part["fnr"].to_numpy()
            rows.append(
                {
                    **cell.key,
                    "subset": subset,
                    "replicas": len(part),
                    "attributes": k,
                    "fpr_mean": float(fpr.mean()),
                    "fpr_sd": _sd(fpr),
                    "fnr_mean": float(fnr.mean()),
                    "fnr_sd": _sd(fnr),
                }
            )
    return _frame(rows, MULTILABEL_COLUMNS)
