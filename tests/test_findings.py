"""findings: claims decided by tests and the prose's formatting, on test_analysis' hand-made store."""

import numpy as np
import pandas as pd
import pytest
from test_analysis import ROOT3, root, runs, top  # noqa: F401 (module fixtures, shared with test_analysis)

from nnrandomness import analysis, findings


def test_one_formatter():
    assert findings.pct(0.012345) == "1.23 %" and findings.pct(float("nan")) == "n/a" and findings.pct(None) == "n/a"
    cases = [
        (0.012345, "pct", "1.23 %"),
        (1.0 / 3, "2f", "0.33"),
        (1.0 / 3, "3f", "0.333"),
        (0.0, "e", "0"),
        (0.000123456, "e", "1.23e-04"),
        (12.6, "ratio", "13"),
        (1.2345, "ratio", "1.2"),
        (True, "flag", "yes"),
        (np.int64(7), "int", "7"),
        (7.0, "int", "7"),
        ("ALGO", "text", "ALGO"),
    ]
    for value, kind, text in cases:
        assert findings.as_text(value, kind) == text, (value, kind)
    for absent in (None, float("nan"), np.float64("nan"), pd.NA):
        assert findings.as_text(absent, "pct") == "n/a"


def test_ci_text():
    frame = pd.DataFrame(
        {
            "churn": [0.0198, 0.01, np.nan],
            "churn_lo": [0.0111, np.nan, np.nan],
            "churn_hi": [0.0231, np.nan, np.nan],
            "l2": [1.5, 2.0, 3.0],
        }
    )
    assert findings.ci_text(frame, "churn").tolist() == ["1.98 % [1.11, 2.31]", "1.00 %", "n/a"]
    assert findings.ci_text(frame, "l2", percent=False).tolist() == ["1.50", "2.00", "3.00"]  # no interval columns
    assert findings.ci_text(frame.iloc[:0], "churn").empty


def test_prose_values(runs):  # noqa: F811
    flips = analysis.churn_flips(runs)
    values = findings.prose_values(flips[flips.dataset == "digits_groups"], {"churn": "pct"}, prefix="x_")
    assert list(values) == [f"x_{s.lower().replace('+', '_')}_churn" for s in findings.noise.SETTINGS]  # every name
    assert values["x_algo_churn"] != "n/a" and values["x_ulp_churn"] == "n/a"
    assert findings.prose_values(flips.iloc[:0], {"churn": "pct"})["ulp_churn"] == "n/a"


def test_rare_common_ratio():
    summary = pd.DataFrame(
        {
            "hardware": "h",
            "dataset": "d",
            "model": "m",
            "setting": ["ALGO", "ALGO", "CONTROL", "CONTROL"],
            "subgroups": ["rare", "common"] * 2,
            "fnr_std": [0.3, 0.1, 0.2, 0.0],
        }
    )
    r = findings.rare_common_ratio(summary).set_index("setting")
    assert r.at["ALGO", "ratio"] == pytest.approx(3.0) and r.at["ALGO", "rare"] == 0.3
    assert np.isnan(r.at["CONTROL", "ratio"])  # no spread among the common subgroups: no ratio
    one_side = findings.rare_common_ratio(summary[summary.subgroups == "rare"])
    assert one_side["common"].isna().all() and one_side["ratio"].isna().all()
    assert findings.rare_common_ratio(summary.iloc[:0]).empty


def test_glue_values(monkeypatch):
    import myst_nb

    calls = []
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display: calls.append((name, value, display)))
    findings.glue_values({"algo_churn": "1.00 %", "ulp_churn": "n/a"}, prefix="bn_")
    assert calls == [("bn_algo_churn", "1.00 %", False), ("bn_ulp_churn", "n/a", False)]  # in order, not displayed


# ----------------------------------------------------------------------------- claims decided by tests
def family_frame(pvalues, effects=(0.005, -0.004), family="churn", settings=("INIT", "DROPOUT"), n=(10, 12)):
    """A hand-made family in analysis' test schema (each setting against ALGO, ``n`` replicas on
    each side), with Holm applied as analysis does."""
    rows = [
        {
            "family": family,
            "name": f"{family}_{a.lower()}_vs_algo",
            "a": a,
            "b": "ALGO",
            "test": "permutation (2000 relabellings)",
            "statistic": "churn",
            "observed": e,
            "effect": e,
            "effect_lo": e - 0.002,
            "effect_hi": e + 0.002,
            "n_a": n[0],
            "n_b": n[1],
            "pvalue": p,
        }
        for a, p, e in zip(settings, pvalues, effects)
    ]
    frame = analysis._tests_frame(rows)
    return frame


def test_a_claim_is_established_only_below_five_percent_after_holm():
    # Raw p 0.03 and 0.04: Holm gives 0.06 and 0.06, so neither is established.
    claims = findings.claims_from_tests(family_frame([0.03, 0.04]))
    assert [c.p_adjusted for c in claims] == pytest.approx([0.06, 0.06])
    assert [c.verdict for c in claims] == ["not established", "not established"]
    assert findings.word(claims[0]) == (
        "INIT and ALGO give churn the data cannot tell apart "
        "(difference 0.50 points, 95 % CI 0.30 to 0.70, n = 10 and 12, p = 0.06 after Holm)"
    )
    claims = findings.claims_from_tests(family_frame([0.01, 0.02]))  # Holm: 0.02, 0.02
    assert [c.verdict for c in claims] == ["established", "established"]
    assert findings.word(claims[1]).startswith("DROPOUT gives less churn than ALGO (difference -0.40 points")
    assert findings.word(claims[0]).endswith("p = 0.02 after Holm)")


def test_claims_table_and_values():
    claims = findings.claims_from_tests(family_frame([0.0005, 0.5]))
    table = findings.claims_table(claims)
    assert list(table.columns) == findings.CLAIMS_COLUMNS and len(table) == 2
    first = table.iloc[0]
    assert first["claim"] == "INIT gives more churn than ALGO" and first["verdict"] == "established"
    assert first["p"] == "< 0.001" and first["adjusted p"] == "0.001" and first["interval"] == "0.30 to 0.70"
    assert table.iloc[1]["claim"] == "DROPOUT and ALGO give churn the data cannot tell apart"
    values = findings.claim_values(claims)
    assert list(values) == ["claim_churn_init_vs_algo", "claim_churn_dropout_vs_algo"]
    assert "p < 0.001 after Holm" not in values["claim_churn_init_vs_algo"]  # adjusted: 0.001
    assert findings.claims_table([]).columns.tolist() == findings.CLAIMS_COLUMNS


def test_an_estimate_has_no_verdict_of_a_test():
    frame = family_frame([0.5, 0.5], family="ulp").iloc[:1].copy()
    frame[["name", "effect", "effect_lo", "effect_hi", "pvalue", "p_adjusted"]] = [
        ["ulp_returns_to_control", 0.2, 0.025, 0.556, np.nan, np.nan]
    ]
    (claim,) = findings.claims_from_tests(frame)
    assert claim.verdict == "estimate" and claim.n == "10 ULP replicas"
    assert findings.word(claim) == (
        "20.00 % of ULP replicas end with CONTROL's predictions (share 20.00 %, 95 % CI 2.50 % to 55.60 %, "
        "n = 10 ULP replicas)"
    )


def test_study_claims_on_the_hand_made_store(runs):  # noqa: F811
    claims = findings.study_claims(
        runs, {"hardware": "cpu-1t", "dataset": "digits", "model": "smallcnn"}, "digits_groups"
    )
    assert set(claims) == {"churn", "sd", "class", "subgroup", "ulp", "variance"}
    assert [c.name for c in claims["churn"]] == ["churn_order_vs_algo"] and claims["ulp"] == []
    assert [c.name for c in claims["class"]] == ["class_max_algo", "class_ratio_algo"]
    for c in [c for family in claims.values() for c in family]:
        assert c.verdict in ("established", "not established") and 0 < c.p_adjusted <= 1
        assert c.low <= c.effect <= c.high or c.name.startswith(("class", "subgroup"))
