"""The study's findings as claims decided by tests, and every number the prose quotes, as text.

A :class:`Claim` is a test result of :mod:`analysis` (effect with its 95 % interval, n, test,
p-value adjusted with Holm across its chapter's family); :func:`word` states it as established
only when the adjusted p-value is below 5 %, otherwise as what the data cannot tell apart;
:func:`study_claims` gathers the study's families, :func:`claims_table` is the book's table of
every claim, and the introduction quotes the sentences 25_claims glues (:data:`INTRO_CLAIMS`).
Numbers are formatted for the prose and the tables with one formatter, :func:`as_text`
(:func:`pct` and :func:`ci_text` are its percentage and interval forms); a value that is absent
(None, NaN) always reads ``n/a``, so every name the prose uses exists.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from . import analysis, noise, store

__all__ = [
    "ALPHA",
    "CLAIMS_COLUMNS",
    "COMPACT_COLUMNS",
    "COMPARISON_COLUMNS",
    "Claim",
    "GPU_BOUND",
    "GPU_ONLY",
    "INTRO_CLAIMS",
    "MISSING_CLAIM",
    "NOT_MEASURED",
    "NULL_TABLE_COLUMNS",
    "OURS_COLUMNS",
    "PAPER_COLUMNS",
    "PAPER_QUANTITIES",
    "PAPER_UNITS",
    "PROSE_COLUMNS",
    "TOOLING_PHRASES",
    "architecture_claims",
    "as_text",
    "ci_text",
    "claim_values",
    "claims_from_tests",
    "claims_table",
    "compact_claims_table",
    "few_replicas_note",
    "glue_values",
    "interval_values",
    "intro_claim_values",
    "null_claims",
    "null_table",
    "ours_table",
    "overhead_export",
    "p_text",
    "paper_comparison",
    "paper_ours",
    "pct",
    "prose_values",
    "rare_common_ratio",
    "read_paper_results",
    "sd_ci_text",
    "study_claims",
    "tooling_claims",
    "tooling_values",
    "twin_text",
    "undecided_text",
    "word",
]

CELL = analysis.CELL


# ----------------------------------------------------------------------------- formatting
def pct(x, digits: int = 2) -> str:
    """A fraction as a percentage for the prose (``0.01234 -> '1.23 %'``); 'n/a' when absent."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:.{digits}f} %"


def as_text(v, kind: str) -> str:
    """One value for the prose or a table, by kind: ``pct`` (a fraction in %), ``2f``/``3f``
    (fixed decimals), ``e`` (scientific, two decimals; exactly 0 reads '0'), ``ratio`` (two
    significant digits), ``flag`` (yes/no), ``int`` or ``text``; 'n/a' when absent."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return "n/a"
    if kind == "pct":
        return pct(v)
    if kind == "2f":
        return f"{v:.2f}"
    if kind == "3f":
        return f"{v:.3f}"
    if kind == "e":
        return "0" if v == 0 else f"{v:.2e}"
    if kind == "ratio":
        return f"{v:.0f}" if v >= 10 else f"{v:.2g}"  # two significant digits
    if kind == "flag":
        return "yes" if v else "no"
    if kind == "int":
        return str(int(v))
    return str(v)


def ci_text(frame: pd.DataFrame, column: str, percent: bool = True, digits: int = 2) -> pd.Series:
    """``column`` with its interval (``<column>_lo``/``_hi``) as text for tables:
    ``'1.98 % [1.11, 2.31]'``; the value alone when there is no interval, 'n/a' when absent."""

    def one(v, lo, hi):
        if pd.isna(v):
            return "n/a"
        text = pct(v, digits) if percent else f"{v:.{digits}f}"
        if pd.isna(lo) or pd.isna(hi):
            return text
        scale = 100 if percent else 1
        return f"{text} [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"

    lo, hi = f"{column}_lo", f"{column}_hi"
    if frame.empty:
        return pd.Series([], dtype=object)
    return pd.Series(
        [
            one(v, a, b)
            for v, a, b in zip(
                frame[column], frame.get(lo, np.nan * frame[column]), frame.get(hi, np.nan * frame[column])
            )
        ],
        index=frame.index,
    )


PROSE_COLUMNS = {
    "acc_mean": "pct",
    "acc_std": "pct",
    "churn": "pct",
    "one_correct": "pct",
    "both_wrong": "pct",
    "l2": "2f",
}


def _slug(setting: str) -> str:
    return setting.lower().replace("+", "_")


def prose_values(table: pd.DataFrame, columns: dict[str, str] | None = None, prefix: str = "") -> dict[str, str]:
    """Per-setting numbers of one (hardware, dataset, model) as text for the prose, keyed
    ``<prefix><setting slug>_<column>`` (``algo_churn``, ``algo_impl_acc_std``, ...) for every
    setting in noise.SETTINGS and every column of ``columns`` (name -> kind, see :func:`as_text`;
    default PROSE_COLUMNS, the top line); 'n/a' where a setting is absent, so that every name the
    prose uses exists. ``table`` holds one row per setting (e.g. :func:`analysis.topline` rows)."""
    columns = PROSE_COLUMNS if columns is None else columns
    rows = table.set_index("setting") if not table.empty else pd.DataFrame()
    out = {}
    for setting in noise.SETTINGS:
        for column, kind in columns.items():
            v = rows.at[setting, column] if setting in rows.index else None
            out[f"{prefix}{_slug(setting)}_{column}"] = as_text(v, kind)
    return out


def glue_values(values: dict[str, str], prefix: str = "") -> None:
    """Glue every ``name: text`` of ``values`` as ``<prefix><name>`` for ``{glue:text}`` in the
    prose (in an executed notebook; nothing is shown in the cell)."""
    from myst_nb import glue  # the book's dependency, not the package's: imported on use

    for name, text in values.items():
        glue(f"{prefix}{name}", text, display=False)


# ----------------------------------------------------------------------------- subgroups
def rare_common_ratio(summary: pd.DataFrame) -> pd.DataFrame:
    """Per cell, from :func:`analysis.rare_vs_common`: the mean FNR std of the rare subgroups
    (``rare``), of the common ones (``common``) and ``ratio`` = rare / common (NaN where common
    is not above 0, or a side is absent)."""
    columns = CELL + ["rare", "common", "ratio"]
    if summary.empty:
        return pd.DataFrame(columns=columns)
    wide = summary.pivot(index=CELL, columns="subgroups", values="fnr_std").reindex(columns=["rare", "common"])
    wide["ratio"] = (wide["rare"] / wide["common"]).where(wide["common"] > 0)
    wide.columns.name = None
    return wide.reset_index()[columns]


# What each null-model test (analysis.class_null_tests, subgroup_null_tests) is about, by name
# prefix: the subject of its sentence. A ratio's excess reads as a number, a spread's in points.
_NULL_SUBJECTS = {
    "class_max": "the most variable class's accuracy",
    "class_ratio": "the most variable class's accuracy, relative to top-1 accuracy,",
    "subgroup_ratio": "the rare subgroups' FNR, relative to the common subgroups',",
    "subgroup_rare": "the rare subgroups' FNR",
    "subgroup_common": "the common subgroups' FNR",
}


def null_claims(tests: pd.DataFrame) -> list[Claim]:
    """One :class:`Claim` per row of :func:`analysis.class_null_tests` or
    :func:`analysis.subgroup_null_tests`, worded for what it tests (a spread, or a ratio of
    spreads, against independent examples; effect: the excess over the null's median, in
    percentage points for a spread). Not established with an interval wholly below zero reads
    as moving less than independent examples would make it (the test is one-sided: "more")."""
    out = []
    for claim, (_, row) in zip(claims_from_tests(tests), tests.iterrows()):
        a = row["a"]
        prefix = next(k for k in _NULL_SUBJECTS if row["name"].startswith(k + "_"))
        what, kind = _NULL_SUBJECTS[prefix], "2f" if prefix.endswith("_ratio") else "points"
        if row["effect_hi"] < 0:
            not_established = f"Under {a}, {what} moves less than independent examples would make it"
        else:
            not_established = (
                f"Under {a}, the data cannot tell whether {what} moves more than independent examples would make it"
            )
        established = f"Under {a}, {what} moves more than independent examples would make it"
        n = f"{int(row['n_a'])} replicas x {int(row['n_b'])} examples"
        effect_name = "excess over the null's median"
        out.append(
            dataclasses.replace(
                claim, established=established, not_established=not_established, kind=kind, n=n, effect_name=effect_name
            )
        )
    return out


NULL_TABLE_COLUMNS = [
    "statistic",
    "replicas",
    "observed",
    "null median",
    "null 95 % range",
    "excess",
    "excess 95 % CI",
    "p",
    "p (Holm)",
    "verdict",
]


def null_table(tests: pd.DataFrame, claims: Iterable[Claim], digits: int = 4) -> pd.DataFrame:
    """The chapters' table of null-model tests (analysis.class_null_tests, subgroup_null_tests)
    with their :func:`null_claims`: per test (index: setting, test name) the statistic, replicas,
    observed value, the null's median and central 95 % range, the excess with its 95 % interval,
    p, Holm-adjusted p and verdict, as text with ``digits`` decimals."""

    def span(lo: pd.Series, hi: pd.Series) -> list[str]:
        return [f"{a:.{digits}f} to {b:.{digits}f}" for a, b in zip(lo, hi)]

    values = {
        "statistic": tests["statistic"],
        "replicas": tests["n_a"],
        "observed": tests["observed"].map(f"{{:.{digits}f}}".format),
        "null median": tests["null_median"].map(f"{{:.{digits}f}}".format),
        "null 95 % range": span(tests["null_lo"], tests["null_hi"]),
        "excess": tests["effect"].map(f"{{:.{digits}f}}".format),
        "excess 95 % CI": span(tests["effect_lo"], tests["effect_hi"]),
        "p": tests["pvalue"].map(p_text),
        "p (Holm)": tests["p_adjusted"].map(p_text),
        "verdict": [c.verdict for c in claims],
    }
    index = pd.MultiIndex.from_arrays([tests["a"], tests["name"]], names=["setting", "test"])
    return pd.DataFrame({k: list(v) for k, v in values.items()}, index=index, columns=NULL_TABLE_COLUMNS)


def _value(v) -> float | None:
    return None if pd.isna(v) else float(v)


# The numbers the hardware chapter's prose quotes for one cell, in glue order after every_cell:
# glue name -> (label: 0 for a, 1 for b; the metric, or None for the label itself).
# Glue names written out, so that grep finds {glue:text}`every_acc_std_a`; one line per hardware.
# fmt: off
_PROSE_A = {"every_hardware_a": None, "every_acc_std_a": "acc_std", "every_class_std_max_a": "class_std_max",
            "every_n_flip_a": "n_flip", "every_observed_var_a": "observed_var",
            "every_predicted_var_a": "predicted_var"}
_PROSE_B = {"every_hardware_b": None, "every_acc_std_b": "acc_std", "every_class_std_max_b": "class_std_max",
            "every_n_flip_b": "n_flip", "every_observed_var_b": "observed_var",
            "every_predicted_var_b": "predicted_var"}
# fmt: on
HARDWARE_PROSE = {**{n: (0, m) for n, m in _PROSE_A.items()}, **{n: (1, m) for n, m in _PROSE_B.items()}}


# ----------------------------------------------------------------------------- CPU tooling (24_hardware)
# How the tooling claims name each group of analysis.TOOLING_GROUPS inside a sentence.
TOOLING_PHRASES = {
    "configuration, CONTROL's seeds": "a change of tooling configuration with CONTROL's seeds",
    "configuration, ALGO's seeds": "a change of tooling configuration with ALGO's seeds",
    "one-ULP poke": "a one-ULP poke of CONTROL",
    "ALGO seeds": "a change of every algorithmic seed (two ALGO replicas)",
}


def tooling_claims(tests: pd.DataFrame) -> list[Claim]:
    """One :class:`Claim` per row of :func:`analysis.tooling_tests`: "A (group a) moves more (or
    fewer) test predictions than (group b)" when the Holm-adjusted p-value is below ALPHA, else
    that the data cannot tell their churn apart; effect: the difference in mean churn with its
    BCa interval, in percentage points; n: the churn values on each side."""
    out = []
    for _, row in tests.iterrows():
        a, b = TOOLING_PHRASES.get(row["a"], row["a"]), TOOLING_PHRASES.get(row["b"], row["b"])
        more = "more" if row["effect"] > 0 else "fewer"
        out.append(
            Claim(
                name=row["name"],
                established=f"{a[0].upper()}{a[1:]} moves {more} test predictions than {b}",
                not_established=f"{a[0].upper()}{a[1:]} and {b} move test predictions by amounts the data "
                "cannot tell apart",
                test=row["test"],
                statistic=row["statistic"],
                effect_name="difference in mean churn",
                effect=float(row["effect"]),
                low=float(row["effect_lo"]),
                high=float(row["effect_hi"]),
                kind="points",
                n=f"{int(row['n_a'])} and {int(row['n_b'])} comparisons",
                pvalue=float(row["pvalue"]),
                p_adjusted=float(row["p_adjusted"]),
            )
        )
    return out


def tooling_values(compare: pd.DataFrame, ident: pd.DataFrame, churn: pd.DataFrame) -> dict[str, str]:
    """The tooling chapter's descriptive numbers, as text: from :func:`analysis.hardware_compare`
    on CONTROL (``compare``, one row per pair of labels) the labels, the pairs, the mean, least
    and largest churn between two configurations and the pairs that give them, and how many pairs
    are bit-identical; from :func:`analysis.identity` on CONTROL (``ident``) how many labels hold
    bit-identical replicas; from :func:`analysis.tooling_churn` each group's mean churn with its
    number of values, and how many ULP replicas end with CONTROL's bits. 'n/a' where absent."""
    pairs = compare.dropna(subset=["churn_matched"])
    labels = sorted(set(compare["hardware_a"]) | set(compare["hardware_b"]))
    lo = pairs.loc[pairs["churn_matched"].idxmin()] if len(pairs) else None
    hi = pairs.loc[pairs["churn_matched"].idxmax()] if len(pairs) else None
    ulp = churn[churn["group"] == "one-ULP poke"]

    def mean(group: str) -> str:
        values = churn.loc[churn["group"] == group, "churn"]
        return f"{pct(values.mean()) if len(values) else 'n/a'} (n = {len(values)})"

    return {
        "tooling_labels": ", ".join(labels) or "n/a",
        "tooling_n_labels": str(len(labels)),
        "tooling_n_pairs": str(len(pairs)),
        "tooling_churn_mean": pct(pairs["churn_matched"].mean()) if len(pairs) else "n/a",
        "tooling_churn_min": pct(lo["churn_matched"]) if lo is not None else "n/a",
        "tooling_churn_max": pct(hi["churn_matched"]) if hi is not None else "n/a",
        "tooling_pair_min": f"{lo['hardware_a']} and {lo['hardware_b']}" if lo is not None else "n/a",
        "tooling_pair_max": f"{hi['hardware_a']} and {hi['hardware_b']}" if hi is not None else "n/a",
        "tooling_identical_pairs": f"{int((pairs['n_identical'] > 0).sum())} of {len(pairs)}",
        "tooling_identical_within": f"{int(ident['identical'].sum())} of {len(ident)}",
        "tooling_mean_control": mean("configuration, CONTROL's seeds"),
        "tooling_mean_algo": mean("configuration, ALGO's seeds"),
        "tooling_mean_ulp": mean("one-ULP poke"),
        "tooling_mean_seeds": mean("ALGO seeds"),
        "tooling_ulp_identical": f"{int(ulp['identical'].sum())} of {len(ulp)}",
    }


# ----------------------------------------------------------------------------- claims decided by tests
ALPHA = 0.05  # a claim is established when its Holm-adjusted p-value is below this


@dataclasses.dataclass(frozen=True)
class Claim:
    """One finding as a test result. ``established`` and ``not_established`` are the two
    sentences it can read as (:func:`word` picks one by ``p_adjusted``); ``effect`` with ``low``
    and ``high`` is the effect size and its 95 % interval, in the unit ``kind`` (see
    :func:`as_text`; ``points`` reads fractions as percentage points); ``n`` says the sample
    sizes in words. ``verdict``: 'established', 'not established', or 'estimate' for a quantity
    reported with its interval and no test (p-values NaN)."""

    name: str
    established: str
    not_established: str
    test: str
    statistic: str
    effect_name: str
    effect: float
    low: float
    high: float
    kind: str
    n: str
    pvalue: float
    p_adjusted: float

    @property
    def verdict(self) -> str:
        if self.p_adjusted is None or math.isnan(self.p_adjusted):
            return "estimate"
        return "established" if self.p_adjusted < ALPHA else "not established"


def _amount(v: float, kind: str) -> str:
    """An effect or bound for the prose: percentage points, or as_text's kinds."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if kind == "points":
        return f"{100 * v:.2f} points"
    if kind == "bare_points":
        return f"{100 * v:.2f}"
    return as_text(v, kind)


def p_text(p: float) -> str:
    """A p-value for the prose: two significant digits, '< 0.001' below 0.001, 'n/a' when absent."""
    if p is None or math.isnan(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.2g}"


def _interval_text(claim: Claim) -> str:
    kind = "bare_points" if claim.kind == "points" else claim.kind
    return f"{_amount(claim.low, kind)} to {_amount(claim.high, kind)}"


def word(claim: Claim) -> str:
    """The claim as the prose states it: the established sentence only when the Holm-adjusted
    p-value is below ALPHA, otherwise what the data cannot tell apart; then the effect, its 95 %
    interval, n and the p-value, e.g. "INIT and DROPOUT give churn the data cannot tell apart
    (difference 0.52 points, 95 % CI -0.15 to 1.26, n = 10 and 10, p = 1 after Holm)"."""
    sentence = claim.established if claim.verdict == "established" else claim.not_established
    detail = f"{claim.effect_name} {_amount(claim.effect, claim.kind)}, 95 % CI {_interval_text(claim)}, n = {claim.n}"
    if claim.verdict != "estimate":
        detail += f", p {'' if p_text(claim.p_adjusted).startswith('<') else '= '}{p_text(claim.p_adjusted)} after Holm"
    return f"{sentence} ({detail})"


def _sentences(row) -> tuple[str, str, str, str]:
    """(established, not established, effect name, kind) for one row of an analysis test frame."""
    a, b, family, name = row["a"], row["b"], row["family"], row["name"]
    more = row["effect"] > 0
    if name == "ulp_returns_to_control":
        share = _amount(row["effect"], "pct")
        text = f"{share} of ULP replicas end with CONTROL's predictions"
        return text, text, "share", "pct"
    if family in ("churn", "ulp"):
        return (
            f"{a} gives {'more' if more else 'less'} churn than {b}",
            f"{a} and {b} give churn the data cannot tell apart",
            "difference",
            "points",
        )
    if family == "sd":
        return (
            f"{a}'s accuracy varies {'more' if more else 'less'} across replicas than {b}'s",
            f"{a} and {b} give spreads of accuracy the data cannot tell apart",
            "SD difference",
            "points",
        )
    if family == "spread":
        what = "per-class accuracy" if name.startswith("class") else "the rare subgroups' FNR"
        return (
            f"Under {a}, {what} moves more than independent examples would make it",
            f"Under {a}, {what} moves as much as independent examples would make it: the data cannot tell "
            "its spread apart from the binomial noise of small groups",
            "excess over the null's median",
            "2f",
        )
    return (
        f"Jordan's estimate and the direct measurement of the variance over the distribution differ ({a} vs {b})",
        "Jordan's estimate and the direct measurement of the variance over the distribution cannot be told apart",
        "difference",
        "e",
    )


def claims_from_tests(tests: pd.DataFrame) -> list[Claim]:
    """One :class:`Claim` per row of an analysis test frame (:func:`analysis.churn_tests`,
    :func:`analysis.sd_tests`, :func:`analysis.spread_null_tests`, :func:`analysis.ulp_tests`,
    :func:`analysis.variance_tests`), worded for its family."""
    out = []
    for _, row in tests.iterrows():
        established, not_established, effect_name, kind = _sentences(row)
        if row["family"] == "spread":
            n = f"{int(row['n_a'])} replicas x {int(row['n_b'])} examples"
        elif row["family"] == "variance":
            n = f"{int(row['n_a'])} replicas, {int(row['n_b'])} extra test sets"
        elif row["name"] == "ulp_returns_to_control":
            n = f"{int(row['n_a'])} ULP replicas"
        else:
            n = f"{int(row['n_a'])} and {int(row['n_b'])}"
        out.append(
            Claim(
                name=row["name"],
                established=established,
                not_established=not_established,
                test=row["test"],
                statistic=row["statistic"],
                effect_name=effect_name,
                effect=float(row["effect"]),
                low=float(row["effect_lo"]),
                high=float(row["effect_hi"]),
                kind=kind,
                n=n,
                pvalue=float(row["pvalue"]),
                p_adjusted=float(row["p_adjusted"]),
            )
        )
    return out


def study_claims(
    runs: store.Runs,
    cell: dict = analysis.MAIN_CELL,
    groups_dataset: str = "mnist1d_groups",
    rare: set[tuple[int, int]] | None = None,
) -> dict[str, list[Claim]]:
    """Every family of claims of the study's main ``cell`` (hardware, dataset, model), by family
    (Holm within each): ``churn`` (each single source vs ALGO and among sources), ``sd`` (accuracy
    SD vs CONTROL and ALGO), ``class`` (the largest per-class spread vs independent examples),
    ``subgroup`` (on ``groups_dataset`` with the same hardware and model: rare and common
    subgroups' spreads vs independent examples; ``rare``: the subgroups rare in TRAINING, as
    :func:`analysis.rare_subgroups` finds them, else rare by test shares), ``ulp`` (ULP vs ALGO
    churn; the share of ULP replicas with CONTROL's predictions) and ``variance`` (Jordan vs
    direct, where the store has extra test sets)."""
    frames = {
        "churn": analysis.churn_tests(runs, cell),
        "sd": analysis.sd_tests(runs, cell),
        "class": analysis.class_null_tests(runs, cell),
        "subgroup": analysis.subgroup_null_tests(runs, {**cell, "dataset": groups_dataset}, rare=rare),
        "ulp": analysis.ulp_tests(runs, cell),
        "variance": analysis.variance_tests(runs.select(**cell)),
    }
    word_family = {"class": null_claims, "subgroup": null_claims}  # worded for a spread against its null
    return {family: word_family.get(family, claims_from_tests)(frame) for family, frame in frames.items()}


# The claims the introduction quotes, glued by 25_claims under claim_<name> (MNIST-1D main cell:
# cnn1d on cpu-1t; the architectures are cnn1d_bn and mlp1d). Each is glued, 'n/a' with a reason
# when the store lacks its runs, so that every name the introduction uses exists.
INTRO_CLAIMS = (
    "churn_ulp_vs_algo",
    "ulp_returns_to_control",
    "churn_init_vs_algo",
    "churn_order_vs_algo",
    "sd_ulp_vs_algo",
    "class_max_algo",
    "subgroup_ratio_algo",
    "jordan_vs_direct_algo_mnist1d_cnn1d",
    "churn_cnn1d_bn_vs_cnn1d_algo",
    "churn_mlp1d_vs_cnn1d_algo",
)
MISSING_CLAIM = "n/a (the run store lacks the runs this claim needs)"


def intro_claim_values(claims: Iterable[Claim], names: Iterable[str] = INTRO_CLAIMS) -> dict[str, str]:
    """:func:`claim_values` of ``claims`` for every name of ``names`` (``claim_<name>``), with
    MISSING_CLAIM for a name no claim has."""
    worded = claim_values(claims)
    return {f"claim_{n}": worded.get(f"claim_{n}", MISSING_CLAIM) for n in names}


def undecided_text(claims: Iterable[Claim], listed: bool = True) -> str:
    """One sentence on the tested claims that are not established: how many of how many and, when
    ``listed``, what each compares (its not-established sentence); says so when every tested
    claim is."""
    tested = [c for c in claims if c.verdict != "estimate"]
    open_ = [c for c in tested if c.verdict == "not established"]
    if not tested:
        return "No claim could be tested: the run store lacks the runs."
    if not open_:
        return f"Every one of the {len(tested)} tested claims is established at 5 % after Holm."
    head = f"{len(open_)} of the {len(tested)} tested claims are not established at 5 % after Holm"
    return f"{head}: {'; '.join(c.not_established for c in open_)}." if listed else f"{head}."


COMPACT_COLUMNS = ["claim", "effect [95 % CI]", "n", "p", "p after Holm", "verdict"]


def compact_claims_table(claims: Iterable[Claim]) -> pd.DataFrame:
    """A chapter's short table of its claims: the worded sentence, the effect with its 95 %
    interval, n, the p-value, the Holm-adjusted p-value and the verdict, all as text."""
    claims = list(claims)
    full = claims_table(claims)  # the book's table, columns merged and renamed
    full["effect [95 % CI]"] = [f"{_amount(c.effect, c.kind)} [{_interval_text(c)}]" for c in claims]
    return full.rename(columns={"adjusted p": "p after Holm"})[COMPACT_COLUMNS]


def architecture_claims(tests: pd.DataFrame) -> list[Claim]:
    """Claims of :func:`analysis.architecture_tests` (churn between models), worded as churn
    comparisons: ``a`` and ``b`` there name the setting on each model."""
    return claims_from_tests(tests.assign(family="churn"))


def interval_values(table: pd.DataFrame, columns: dict[str, bool] | None = None, prefix: str = "") -> dict[str, str]:
    """Per-setting values with their 95 % intervals (:func:`ci_text`) for the prose, keyed
    ``<prefix><setting slug>_<column>_ci`` for every setting of noise.SETTINGS and every column of
    ``columns`` (name -> in percent; default acc_std and churn in %, l2 not), 'n/a' where absent."""
    columns = {"acc_std": True, "churn": True, "l2": False} if columns is None else columns
    rows = table.set_index("setting") if not table.empty else pd.DataFrame()
    out = {}
    for setting in noise.SETTINGS:
        for column, percent in columns.items():
            one = rows.loc[[setting]] if setting in rows.index else None
            text = ci_text(one, column, percent=percent).iloc[0] if one is not None else "n/a"
            out[f"{prefix}{_slug(setting)}_{column}_ci"] = text
    return out


def sd_ci_text(frame: pd.DataFrame, method: str = "chi2") -> pd.Series:
    """:func:`analysis.sd_intervals`' SD with its ``method`` interval (``chi2`` or ``bonett``) as
    text for tables: ``'0.31 % [0.27, 0.36]'``."""
    renamed = {"acc_sd": "sd", f"{method}_lo": "sd_lo", f"{method}_hi": "sd_hi"}
    return ci_text(frame[list(renamed)].rename(columns=renamed), "sd")


def few_replicas_note(table: pd.DataFrame, minimum: int = analysis.MIN_REPLICAS_CI) -> str:
    """For a caption: the settings of ``table`` (one row per setting, ``n_replicas``) with fewer
    than ``minimum`` replicas, which show no interval; empty when there are none."""
    few = table[table["n_replicas"] < minimum]
    if few.empty:
        return ""
    parts = [f"{s} {int(n)}" for s, n in zip(few["setting"], few["n_replicas"])]
    return f" (replicas too few for an interval: {', '.join(parts)})"


def twin_text(twins: pd.DataFrame) -> str:
    """:func:`analysis.twin_identity` rows as one sentence: per (setting, twin) how many of the
    matched replicas are bit-identical to their twin ("2 of 2 IMPL replicas are bit-identical to
    CONTROL's (same seeds)"); says so when the store holds no twins."""
    if twins.empty:
        return "The run store holds no replicas of IMPL or ALGO+IMPL beside their twins with the same seeds."
    parts = [
        f"{int(k)} of {int(n)} {s} replicas on {hw} are bit-identical to {t}'s with the same seeds"
        for hw, s, t, n, k in zip(
            twins["hardware"], twins["setting"], twins["twin"], twins["n_matched"], twins["n_identical"]
        )
    ]
    return "; ".join(parts) + "."


CLAIMS_COLUMNS = ["claim", "test", "statistic", "effect", "interval", "n", "p", "adjusted p", "verdict"]


def claims_table(claims: Iterable[Claim]) -> pd.DataFrame:
    """The book's table of claims: one row per claim with its worded sentence, test, statistic,
    effect, 95 % interval, n, p-value, Holm-adjusted p-value and verdict, all as text."""
    rows = [
        {
            "claim": (c.established if c.verdict == "established" else c.not_established),
            "test": c.test,
            "statistic": c.statistic,
            "effect": f"{c.effect_name} {_amount(c.effect, c.kind)}",
            "interval": _interval_text(c),
            "n": c.n,
            "p": p_text(c.pvalue),
            "adjusted p": p_text(c.p_adjusted),
            "verdict": c.verdict,
        }
        for c in claims
    ]
    return pd.DataFrame(rows, columns=CLAIMS_COLUMNS)


def claim_values(claims: Iterable[Claim]) -> dict[str, str]:
    """Each claim worded (:func:`word`) under ``claim_<name>``, for glue into the prose."""
    return {f"claim_{c.name}": word(c) for c in claims}


# ----------------------------------------------------------------------------- the paper, side by side
# data/paper_results.csv: what Zhuang et al. report, one row per quoted value or statement, each
# with its citation. A row gives a number (value, unit) or, where the paper gives words, the claim
# it quotes (value empty).
PAPER_COLUMNS = ["quantity", "model", "dataset", "setting", "hardware", "value", "unit", "claim", "source"]
# The quantities a row may name, with the wording the table uses. Ours are computed with the same
# definitions (metrics: sample SD, mean pairwise churn, mean pairwise L2; overhead: deterministic
# step time / non-deterministic - 1).
PAPER_QUANTITIES = {
    "acc_sd": "SD of top-1 accuracy across replicas",
    "churn": "predictive churn, mean over pairs of replicas",
    "l2": "mean pairwise L2 distance of the final weights",
    "class_acc_sd_max": "largest SD of per-class accuracy across replicas",
    "determinism_overhead_max": "largest overhead of deterministic training over the models",
    "determinism_overhead_range": "overhead of deterministic training across models",
}
PAPER_UNITS = ("%", "fraction", "")  # '%': a percentage as printed; 'fraction': 0-1; '': no unit
# Quantities that exist only where kernels are non-deterministic: on a GPU row the CPU has no
# number to set beside it (the CPU kernels this study uses are deterministic at a fixed thread count).
GPU_BOUND = ("determinism_overhead_max",)
COMPARISON_COLUMNS = ["quantity", "setting", "paper: model, data", "paper: hardware", "paper", "source"]
COMPARISON_COLUMNS += ["ours: cell", "ours", "comparison"]
OURS_COLUMNS = ["quantity", "setting", "hardware", "dataset", "model", "value", "lo", "hi", "n", "unit", "text"]
GPU_ONLY = "GPU only: the CPU default cannot reproduce it"
NOT_MEASURED = "not measured in this run store"


def read_paper_results(path) -> pd.DataFrame:
    """The paper's values (:data:`PAPER_COLUMNS`) from the CSV at ``path``, checked before use:
    exactly those columns; a known quantity (:data:`PAPER_QUANTITIES`), setting ('' for a
    statement about every setting, else one of noise.SETTINGS) and unit (:data:`PAPER_UNITS`);
    a number or an empty value (then a quoted claim); a source on every row. ``value`` comes back
    as a float (NaN for a statement). ValueError naming the row, the bad value and the choices."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(frame.columns) != PAPER_COLUMNS:
        raise ValueError(f"{path}: columns {list(frame.columns)}; expected {PAPER_COLUMNS}")
    choices = {
        "quantity": list(PAPER_QUANTITIES),
        "setting": ["", *noise.SETTINGS],
        "unit": list(PAPER_UNITS),
    }
    values = []
    for i, row in frame.iterrows():
        where = f"{path}: row {i + 2}"  # the header is line 1
        for column, valid in choices.items():
            if row[column] not in valid:
                raise ValueError(f"{where}: {column} {row[column]!r} is not one of {valid}")
        if not row["source"].strip():
            raise ValueError(f"{where}: no source (every value of the paper needs its citation)")
        if row["value"] == "":
            if not row["claim"].strip():
                raise ValueError(f"{where}: neither a value nor a quoted claim")
            values.append(float("nan"))
            continue
        try:
            values.append(float(row["value"]))
        except ValueError:
            raise ValueError(f"{where}: value {row['value']!r} is not a number (leave it empty for a claim)") from None
    return frame.assign(value=pd.Series(values, index=frame.index, dtype=np.float64))


def _is_gpu(hardware: str) -> bool:
    """A hardware name of the paper (P100, 'GPU') or a label of ours (cuda-...) that is not the CPU."""
    return bool(hardware) and not hardware.lower().startswith("cpu")


def _same_gpu(paper_hw: str, ours_hw: str) -> bool:
    """Whether our hardware label names the paper's GPU (``cuda-tesla-v100`` for 'V100'); 'GPU'
    (any) matches every GPU label."""
    return _is_gpu(ours_hw) and (paper_hw.upper() == "GPU" or paper_hw.lower() in ours_hw.lower())


def _number(value: float, unit: str, lo: float = float("nan"), hi: float = float("nan"), quoted: bool = False) -> str:
    """One value with its unit and interval as the table prints it: the paper's (``quoted``) as it
    prints them, ours with fixed decimals (an overhead with its sign)."""
    if unit == "fraction":
        text, scale, digits = pct(value), 100, 2
    elif unit == "%":
        text, scale, digits = f"{value:g} %" if quoted else f"{value:+.1f} %", 1, 1
    else:
        text, scale, digits = f"{value:.2f}", 1, 2
    if not (pd.isna(lo) or pd.isna(hi)):
        text += f" [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"
    return text


def _differences(paper: pd.Series, ours: pd.Series) -> list[str]:
    """What differs between a paper row and our row: model, dataset, hardware."""
    out = [k for k in ("model", "dataset") if str(paper[k]).lower() != str(ours[k]).lower()]
    if paper["hardware"].lower() not in str(ours["hardware"]).lower():
        out.append("hardware")
    return out


def _ours_text(o: pd.Series) -> str:
    """One row of ours as text: its ``text`` when it has one, else the value with its interval
    and n."""
    if isinstance(o["text"], str) and o["text"]:
        return o["text"]
    text = _number(o["value"], o["unit"], o["lo"], o["hi"])
    return text if pd.isna(o["n"]) else text + f" (n={int(o['n'])})"


def ours_table(ours: pd.DataFrame) -> pd.DataFrame:
    """Our side (:data:`OURS_COLUMNS`) as the chapter shows it, all text: quantity (its wording),
    setting ('-' for the overhead sweeps), cell and the value with its interval and n. The rows
    that only answer a paper statement about every setting (a copy of one setting's row) are
    left out."""
    shown = ours[(ours["setting"] != "") | ours["quantity"].str.startswith("determinism_")]
    return pd.DataFrame(
        {
            "quantity": shown["quantity"].map(PAPER_QUANTITIES),
            "setting": shown["setting"].replace("", "-"),
            "cell": shown["hardware"] + "/" + shown["dataset"] + "/" + shown["model"],
            "ours": [_ours_text(o) for _, o in shown.iterrows()],
        }
    ).reset_index(drop=True)


def paper_comparison(paper: pd.DataFrame, ours: pd.DataFrame) -> pd.DataFrame:
    """The paper's rows (:func:`read_paper_results`) side by side with ours (:data:`OURS_COLUMNS`,
    e.g. :func:`paper_ours`), one row per paper row (:data:`COMPARISON_COLUMNS`, all text).

    Ours is the row of the same quantity and setting. On a paper row whose hardware is a GPU and
    whose quantity exists only with non-deterministic kernels (:data:`GPU_BOUND`, or a setting
    with IMPL in it), only our runs on that GPU count; without them the row reads
    :data:`GPU_ONLY` rather than a CPU number. Otherwise the comparison names what differs
    ("comparable in kind only: different model, dataset, hardware"), or reads "same quantity,
    model, data and hardware"; no row of ours reads :data:`NOT_MEASURED`."""
    rows = []
    for _, p in paper.iterrows():
        mine = ours[(ours["quantity"] == p["quantity"]) & (ours["setting"] == p["setting"])]
        gpu_bound = p["quantity"] in GPU_BOUND or "IMPL" in p["setting"]
        if _is_gpu(p["hardware"]) and gpu_bound:
            mine = mine[[_same_gpu(p["hardware"], h) for h in mine["hardware"]]]
        if p["claim"] and pd.isna(p["value"]):
            theirs = f"\u201c{p['claim']}\u201d"
        else:
            theirs = _number(p["value"], p["unit"], quoted=True)
        every = "-" if p["quantity"].startswith("determinism_") else "every setting"
        row = {
            "quantity": PAPER_QUANTITIES[p["quantity"]],
            "setting": p["setting"] or every,
            "paper: model, data": f"{p['model']}; {p['dataset']}",
            "paper: hardware": p["hardware"],
            "paper": theirs,
            "source": p["source"],
        }
        if mine.empty:
            row.update({"ours: cell": "-", "ours": "-", "comparison": GPU_ONLY if gpu_bound else NOT_MEASURED})
            rows.append(row)
            continue
        o = mine.iloc[0]
        text = _ours_text(o)
        differ = _differences(p, o)
        row.update(
            {
                "ours: cell": f"{o['hardware']}/{o['dataset']}/{o['model']}",
                "ours": text,
                "comparison": "comparable in kind only: different " + ", ".join(differ)
                if differ
                else "same quantity, model, data and hardware",
            }
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def paper_ours(
    top: pd.DataFrame, spread: pd.DataFrame, sweeps: dict[str, pd.DataFrame], statement_setting: str = "ALGO"
) -> pd.DataFrame:
    """Our side of the comparison (:data:`OURS_COLUMNS`), from :func:`analysis.topline` rows
    (``acc_sd``, ``churn``, ``l2`` per setting, with their intervals and n), from
    :func:`analysis.per_class_spread` rows (``class_acc_sd_max``: the largest per-class SD beside
    the top-1 SD, n; no interval) and from overhead sweeps (hardware label -> rows of
    ``overhead.read_all``; ``determinism_overhead_max``: the largest ``det_full`` overhead over the
    models with that model's IQR as its range, ``determinism_overhead_range``: the smallest to the
    largest). A paper statement about every setting (setting '') is answered by
    ``statement_setting``'s row: the setting whose spread the CPU shows (ALGO: every algorithmic
    source varies; the CPU kernels add none)."""
    rows = []
    for _, t in top.iterrows():
        base = {"setting": t["setting"], "hardware": t["hardware"], "dataset": t["dataset"], "model": t["model"]}
        for quantity, column, unit in (
            ("acc_sd", "acc_std", "fraction"),
            ("churn", "churn", "fraction"),
            ("l2", "l2", ""),
        ):
            lo, hi = t.get(f"{column}_lo", np.nan), t.get(f"{column}_hi", np.nan)
            rows.append({**base, "quantity": quantity, "value": t[column], "lo": lo, "hi": hi})
            rows[-1].update(n=t["n_replicas"], unit=unit, text="")
    for _, s in spread.iterrows():
        which = "no class moves" if pd.isna(s["class_max"]) else f"class {int(s['class_max'])}"
        text = f"{pct(s['class_std_max'])} ({which}; top-1 SD {pct(s['acc_std'])}, n={int(s['n_replicas'])})"
        rows.append(
            {
                "quantity": "class_acc_sd_max",
                **{k: s[k] for k in ("setting", "hardware", "dataset", "model")},
                **{"value": s["class_std_max"], "lo": np.nan, "hi": np.nan, "n": s["n_replicas"]},
                **{"unit": "fraction", "text": text},
            }
        )
    from .overhead import report  # layer 3, below findings

    for label, results in sweeps.items():
        det = report.timed_rows(results)
        det = det[det["configuration"] == "det_full"].dropna(subset=["overhead_pct"])
        if det.empty:
            continue
        top_row = det.loc[det["overhead_pct"].idxmax()]
        low_row = det.loc[det["overhead_pct"].idxmin()]
        base = {"setting": "", "hardware": label, "dataset": f"synthetic {int(top_row['image_size'])} px"}
        lo, hi, n = top_row["overhead_lo"], top_row["overhead_hi"], len(det)
        rows.append(
            {
                **base,
                "quantity": "determinism_overhead_max",
                "model": top_row["model"],
                "value": top_row["overhead_pct"],
            }
            | {"lo": lo, "hi": hi, "n": n, "unit": "%", "text": ""}
        )
        text = (
            f"{low_row['overhead_pct']:+.1f} % ({low_row['model']}) to {top_row['overhead_pct']:+.1f} % "
            f"({top_row['model']}) over {n} models"
        )
        rows.append(
            {**base, "quantity": "determinism_overhead_range", "model": f"{n} models", "value": np.nan}
            | {"lo": np.nan, "hi": np.nan, "n": n, "unit": "%", "text": text}
        )
    out = pd.DataFrame(rows, columns=OURS_COLUMNS)
    said = out[out["setting"] == statement_setting].copy()
    said["text"] = [
        f"{statement_setting}: " + (t or _number(v, u, lo, hi) + f" (n={int(n)})")
        for t, v, u, lo, hi, n in zip(said["text"], said["value"], said["unit"], said["lo"], said["hi"], said["n"])
    ]
    said["setting"] = ""
    return pd.concat([out, said], ignore_index=True) if len(said) else out


def overhead_export(sweeps: dict[str, pd.DataFrame], manifests: dict[str, dict], repository=".") -> pd.DataFrame:
    """The overhead results for download: every sweep's rows (hardware label -> rows, as
    ``overhead.read_all``; ``flags`` is the JSON of the backend flags requested and in effect),
    with the provenance of each sweep from its manifest: the machine (``cpu_model``, ``gpu_name``,
    ``torch``), ``git_commit`` (the commit it ran from) and ``git_commit_date`` (that commit's
    date, :func:`analysis.commit_dates` in the git repository holding ``repository``; '' when git
    does not know it). Sorted by hardware, model and configuration."""
    frames = []
    for label, rows in sweeps.items():
        env = (manifests.get(label) or {}).get("environment") or {}
        extra = {k: env.get(k) for k in ("cpu_model", "gpu_name", "torch", "git_commit")}
        frames.append(rows.assign(hardware=label, **extra))
    columns = ["hardware", "model", "configuration", "git_commit", "git_commit_date"]
    if not frames:
        return pd.DataFrame(columns=columns)
    out = pd.concat(frames, ignore_index=True)
    dates = analysis.commit_dates(out["git_commit"].dropna(), repository)
    out["git_commit_date"] = out["git_commit"].map(lambda c: dates.get(c, "") if isinstance(c, str) else "")
    return out.sort_values(columns[:3], ignore_index=True, kind="mergesort")
