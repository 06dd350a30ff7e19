"""Brief C2's additions for chapters 21-23 (analysis.spread_null_groups, class_null_tests,
subgroup_null_tests, rare_subgroups; findings.null_claims; charts.null_range_chart, jordan_direct_chart,
unstable_signals), checked on a hand-made store against numbers computed by hand."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from nnrandomness import analysis, charts, findings, store
from nnrandomness import stats as study_stats
from nnrandomness.train import ReplicaResult, ReplicaSpec

LABELS = [0, 0, 0, 0, 1, 1, 1, 1]
GROUPS = [0, 0, 0, 1, 1, 1, 1, 0]  # subgroups (0, 0): examples 0-2; (0, 1): 3; (1, 1): 4-6; (1, 0): 7
# Right (1) or wrong (0) per replica and example; a wrong prediction is the other class.
CORRECT = [
    [1, 1, 1, 1, 1, 1, 1, 1],
    [1, 1, 0, 0, 1, 1, 1, 1],
    [1, 1, 1, 1, 1, 0, 1, 0],
    [1, 1, 1, 0, 1, 1, 1, 0],
]
CELL = {"hardware": "cpu-1t", "dataset": "digits_groups", "model": "smallcnn"}


def fake(setting: str, replica: int, correct) -> ReplicaResult:
    labels = np.asarray(LABELS)
    preds = np.where(np.asarray(correct) == 1, labels, 1 - labels)
    return ReplicaResult(
        spec=ReplicaSpec(dataset="digits_groups", model="smallcnn", setting=setting, replica=replica, epochs=1),
        seeds={"init": 1, "order": 2, "aug": 3, "dropout": 4, "perturb": 5},
        history=pd.DataFrame({"epoch": [1], "test_accuracy": [float(np.mean(correct))], "seconds": [0.1]}),
        predictions=preds,
        probabilities=None,
        labels=labels,
        groups=np.asarray(GROUPS),
        weights={"w": torch.arange(3, dtype=torch.float32) + replica},
        backend={"requested": {}, "effective": {}},
        environment={"torch": torch.__version__, "git_commit": "abc", "cpu_model": "test cpu"},
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("c2")
    for k, c in enumerate(CORRECT):
        store.write_replica(root, "cpu-1t", fake("ALGO", k, c))
    for k in range(2):  # too few replicas to spread: no rows
        store.write_replica(root, "cpu-1t", fake("CONTROL", k, CORRECT[0]))
    return store.load_runs(root)


def test_rare_subgroups_by_hand():
    # class 0: attribute 1 holds 1 of 3; class 1: attribute 0 holds 1 of 4
    assert analysis.rare_subgroups([0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 0]) == {(0, 1), (1, 0)}
    assert analysis.rare_subgroups([0, 0, 1, 1], [0, 1, 0, 1]) == set()  # equal shares: none is rare


def test_spread_null_groups_per_class(runs):
    g = analysis.spread_null_groups(runs, CELL, settings=["ALGO", "CONTROL"], n=199)
    assert list(g["setting"].unique()) == ["ALGO"] and list(g["class"]) == [0, 1]
    # class 0 accuracies 1, 1/2, 1, 3/4 (class 1: 1, 1, 1/2, 3/4): deviations 3/16, -5/16, 3/16,
    # -1/16, squares sum to 44/256 = 11/64, variance 11/192
    assert g["sd"].to_numpy() == pytest.approx([math.sqrt(11 / 192)] * 2)
    assert (g["n_examples"] == 4).all() and (g["n_replicas"] == 4).all() and g["rare"].isna().all()
    assert ((g["null_lo"] <= g["null_median"]) & (g["null_median"] <= g["null_hi"])).all()
    assert g["excess"].to_numpy() == pytest.approx((g["sd"] - g["null_median"]).to_numpy())
    # The per-class null is the one spread_null_tests tests against (same n and seed).
    direct = study_stats.independent_null(
        np.asarray(CORRECT, dtype=np.int8), np.asarray(LABELS), "max_ratio", n_sim=199, n_boot=199
    )["groups"]
    assert g["null_median"].to_numpy() == pytest.approx(direct["null_median"])


def test_spread_null_groups_per_subgroup(runs):
    g = analysis.spread_null_groups(runs, CELL, by_subgroup=True, rare={(0, 1), (1, 0)}, n=199).set_index("group")
    # codes label * 2 + attribute: 0 = (0, 0), 1 = (0, 1), 2 = (1, 0), 3 = (1, 1)
    assert list(g["class"]) == [0, 0, 1, 1] and list(g["attribute"]) == [0, 1, 0, 1]
    assert list(g["rare"]) == [False, True, True, False] and list(g["n_examples"]) == [3, 1, 1, 3]
    # (0, 0): 1, 2/3, 1, 1 -> SD 1/6; (0, 1): 1, 0, 1, 0 -> SD sqrt(1/3); (1, 0): 1, 1, 0, 0; (1, 1): 1, 1, 2/3, 1
    third = math.sqrt(1 / 3)
    assert g["sd"].to_numpy() == pytest.approx([1 / 6, third, third, 1 / 6])


def test_subgroup_null_tests_by_hand(runs):
    t = analysis.subgroup_null_tests(runs, CELL, settings=["ALGO", "CONTROL"], rare={(0, 1), (1, 0)}, n=199)
    t = t.set_index("name")
    assert list(t.index) == ["subgroup_ratio_algo", "subgroup_rare_algo", "subgroup_common_algo"]
    third = math.sqrt(1 / 3)
    assert t.at["subgroup_ratio_algo", "observed"] == pytest.approx(third / (1 / 6))  # 2 sqrt(3)
    assert t.at["subgroup_rare_algo", "observed"] == pytest.approx(third)
    assert t.at["subgroup_common_algo", "observed"] == pytest.approx(1 / 6)
    assert list(t["n_b"]) == [8, 2, 6] and (t["n_a"] == 4).all() and (t["family"] == "subgroup").all()
    assert t["effect"].to_numpy() == pytest.approx((t["observed"] - t["null_median"]).to_numpy())
    assert t["p_adjusted"].to_numpy() == pytest.approx(study_stats.holm(t["pvalue"].to_numpy()))
    # The other definition of rare turns the ratio over; test shares give the first one here.
    flipped = analysis.subgroup_null_tests(runs, CELL, rare={(0, 0), (1, 1)}, n=199).set_index("name")
    assert flipped.at["subgroup_ratio_algo", "observed"] == pytest.approx((1 / 6) / third)
    by_share = analysis.subgroup_null_tests(runs, CELL, n=199).set_index("name")
    assert by_share.at["subgroup_ratio_algo", "observed"] == pytest.approx(2 * math.sqrt(3))


def test_class_null_tests_by_hand(runs):
    t = analysis.class_null_tests(runs, CELL, settings=["ALGO", "CONTROL"], n=199).set_index("name")
    assert list(t.index) == ["class_max_algo", "class_ratio_algo"] and (t["family"] == "class").all()
    # both classes: SD sqrt(11/192); top-1 accuracies 1, 3/4, 3/4, 3/4: variance 3/64 / 3, SD 1/8
    assert t.at["class_max_algo", "observed"] == pytest.approx(math.sqrt(11 / 192))
    assert t.at["class_ratio_algo", "observed"] == pytest.approx(8 * math.sqrt(11 / 192))
    assert t["p_adjusted"].to_numpy() == pytest.approx(study_stats.holm(t["pvalue"].to_numpy()))
    # The ratio row is the one spread_null_tests computes (same n and seed).
    same = analysis.spread_null_tests(runs, CELL, groups_dataset="", n=199).iloc[0]
    assert same["observed"] == pytest.approx(t.at["class_ratio_algo", "observed"])
    assert same["pvalue"] == t.at["class_ratio_algo", "pvalue"]
    assert same["null_median"] == t.at["class_ratio_algo", "null_median"]


def test_subgroup_null_tests_need_both_kinds_and_groups(runs):
    assert analysis.subgroup_null_tests(runs, CELL, rare={(0, 0), (0, 1), (1, 0), (1, 1)}, n=99).empty
    assert analysis.subgroup_null_tests(runs, {**CELL, "dataset": "absent"}, n=99).empty


def test_null_claims_wording():
    tests = pd.DataFrame(
        {
            "family": "subgroup",  # the schema of analysis.subgroup_null_tests
            "name": ["subgroup_ratio_algo", "subgroup_rare_algo", "subgroup_common_algo"],
            "a": "ALGO",
            "b": "independent examples",
            "test": "null",
            "statistic": ["ratio", "rare", "common"],
            "effect": [0.5, 0.01, 0.002],
            "effect_lo": [0.1, 0.005, -0.001],
            "effect_hi": [0.9, 0.02, 0.004],
            "n_a": 30,
            "n_b": [10000, 5000, 5000],
            "pvalue": [0.01, 0.001, 0.3],
            "p_adjusted": [0.02, 0.003, 0.3],
        }
    )
    ratio, rare, common = findings.null_claims(tests)
    assert ratio.verdict == "established" and rare.verdict == "established" and common.verdict == "not established"
    assert findings.word(ratio).startswith(
        "Under ALGO, the rare subgroups' FNR, relative to the common subgroups', moves more than"
    )
    assert "0.50, 95 % CI 0.10 to 0.90, n = 30 replicas x 10000 examples, p = 0.02 after Holm" in findings.word(ratio)
    assert "excess over the null's median 1.00 points, 95 % CI 0.50 to 2.00" in findings.word(rare)
    assert findings.word(common).startswith("Under ALGO, the data cannot tell whether the common subgroups' FNR")
    # Not established with the whole interval below zero: less than independent examples give.
    below = tests.iloc[[0]].assign(
        name="class_max_algo", effect=-0.01, effect_lo=-0.02, effect_hi=-0.005, p_adjusted=1.0
    )
    (claim,) = findings.null_claims(below)
    assert findings.word(claim).startswith(
        "Under ALGO, the most variable class's accuracy moves less than independent examples would make it "
        "(excess over the null's median -1.00 points, 95 % CI -2.00 to -0.50"
    )


def test_null_range_chart_is_neutral_and_faceted(runs):
    g = analysis.spread_null_groups(runs, CELL, by_subgroup=True, n=99)
    spec = charts.null_range_chart(g.assign(name=g["group"].astype(str)), label="subgroup", title="t").to_dict()
    text = str(spec)
    assert spec["facet"]["field"] == "setting" and charts.NEUTRAL_DARK in text and charts.NEUTRAL_LIGHT in text
    assert not any(colour in text for colour in charts.SETTING_COLORS.values() if colour != "#999999")
    assert "triangle-up" in text  # rare subgroups by shape
    g = analysis.spread_null_groups(runs, CELL, n=99)  # classes: no shape, no legend
    assert "triangle-up" not in str(charts.null_range_chart(g.assign(name="c"), label="class", title="t").to_dict())


def test_jordan_direct_chart_keeps_the_sign():
    variance = pd.DataFrame(
        {
            "setting": ["ALGO"],
            "n_replicas": [3],
            "n_sets": [2],
            "jordan_var": [-0.0004],  # negative: drawn at -2 % (signed SD), not clipped
            "jordan_lo": [-0.0009],
            "jordan_hi": [0.0001],
            "direct_var": [0.0001],
            "direct_lo": [0.0],
            "direct_hi": [0.0004],
        }
    )
    spec = charts.jordan_direct_chart(variance).to_dict()
    rows = next(v for k, v in spec["datasets"].items() if any("method" in r for r in v))
    jordan = next(r for r in rows if r["method"].startswith("Jordan"))
    assert jordan["var"] == pytest.approx(-0.02) and jordan["lo"] == pytest.approx(-0.03)
    assert jordan["hi"] == pytest.approx(0.01)


def test_unstable_signals_draws_lines_and_votes():
    chosen = pd.DataFrame({"example": [1, 0], "label": [3, 2], "n_replicas": [4, 4]})
    signals = np.arange(2 * 2 * 5, dtype=np.float32).reshape(2, 2, 5)  # (N, C, L): channels averaged
    votes = pd.DataFrame(
        {"example": [1, 1, 0], "prediction": [3, 5, 2], "votes": [3, 1, 4], "correct": [True, False, True]}
    )
    spec = charts.unstable_signals(chosen, signals, votes, "ALGO").to_dict()
    data = [r for v in spec["datasets"].values() for r in v]
    line = [r["x"] for r in data if r.get("example") == "#1 (label 3)" and "t" in r]
    assert line == pytest.approx([12.5, 13.5, 14.5, 15.5, 16.5])  # mean of rows 10-14 and 15-19
    assert {r["outcome"] for r in data if "outcome" in r} == {"right", "wrong"}


def test_null_table_by_hand(runs):
    t = analysis.class_null_tests(runs, CELL, n=199)
    table = findings.null_table(t, findings.null_claims(t), digits=3)
    assert list(table.columns) == findings.NULL_TABLE_COLUMNS
    assert list(table.index) == [("ALGO", "class_max_algo"), ("ALGO", "class_ratio_algo")]
    row = table.loc[("ALGO", "class_max_algo")]
    assert row["observed"] == f"{math.sqrt(11 / 192):.3f}" and row["replicas"] == 4  # 0.239
    assert row["null 95 % range"] == f"{t['null_lo'].iloc[0]:.3f} to {t['null_hi'].iloc[0]:.3f}"
    assert row["verdict"] in ("established", "not established")
