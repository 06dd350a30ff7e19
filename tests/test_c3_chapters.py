"""The CPU tooling chapter (24_hardware) and the runs chapter (11_runs): their analysis, findings
and chart functions, checked on a hand-made store against numbers computed by hand (comments)."""

import itertools
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from nnrandomness import analysis, charts, findings, store
from nnrandomness import stats as study_stats
from nnrandomness.train import ReplicaResult, ReplicaSpec

LABELS = [0, 1, 2, 1]  # 4 test examples
CONTROL = [0, 1, 2, 1]  # CONTROL's predictions on cpu-1t (all right)
# ALGO on cpu-1t: the disjoint pairs (0, 1) and (2, 3) differ on 1 and on 3 of the 4 examples.
ALGO = [[0, 1, 2, 1], [1, 1, 2, 1], [0, 0, 0, 1], [0, 1, 2, 0]]
ULP = [[0, 1, 2, 1], [0, 1, 0, 1], [2, 2, 2, 1]]  # against CONTROL: churn 0, 1/4, 2/4


def fake(setting, replica, preds, threads=1, weight=0.0, seconds=1.0) -> ReplicaResult:
    """A hand-made mnist1d/cnn1d replica; ``weight`` moves its one weight (so its weights hash)."""
    preds = np.asarray(preds)
    return ReplicaResult(
        spec=ReplicaSpec(dataset="mnist1d", model="cnn1d", setting=setting, replica=replica, epochs=2, threads=threads),
        seeds={"init": 1, "order": 2, "aug": 3, "dropout": 4, "perturb": 5},
        history=pd.DataFrame({"epoch": [1, 2], "test_accuracy": [0.5, float(np.mean(preds == LABELS))]}),
        predictions=preds,
        probabilities=None,
        labels=np.asarray(LABELS),
        groups=None,
        weights={"w": torch.full((3,), weight)},
        backend={"requested": {}, "effective": {}},
        environment={"torch": torch.__version__, "git_commit": "abc", "cpu_model": "test cpu", "cpu_count": 2},
        timings={"train_seconds": seconds},
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for k in range(2):  # CONTROL: bit-identical within each label
        store.write_replica(root, "cpu-1t", fake("CONTROL", k, CONTROL, seconds=1.0 + k))
        store.write_replica(root, "cpu-2t", fake("CONTROL", k, [0, 1, 2, 2], threads=2, weight=0.5, seconds=4.0))
        # same predictions as cpu-1t, other weights: churn 0 but not the same bits
        store.write_replica(root, "cpu-1t-avx2", fake("CONTROL", k, CONTROL, weight=0.25, seconds=2.0))
    for k, p in enumerate(ALGO):
        store.write_replica(root, "cpu-1t", fake("ALGO", k, p, weight=float(k)))
    store.write_replica(root, "cpu-2t", fake("ALGO", 0, [0, 1, 2, 2], threads=2, weight=9.0))  # vs ALGO 0: 1/4
    store.write_replica(root, "cpu-2t", fake("ALGO", 1, ALGO[1], threads=2, weight=1.0))  # ALGO 1's very bits
    for r, p in enumerate(ULP):
        store.write_replica(root, "cpu-1t", fake("ULP", r, p, weight=0.0 if r == 0 else 0.1 * r))
    return root


@pytest.fixture(scope="module")
def runs(root):
    return store.load_runs(root)


# ----------------------------------------------------------------------------- parameters
def test_held_counts_complete_replicas_by_cell(root, tmp_path):
    cells = analysis.held(root).set_index(["hardware", "setting"])["replicas"]
    assert cells[("cpu-1t", "ALGO")] == 4 and cells[("cpu-2t", "ALGO")] == 2 and cells[("cpu-1t", "ULP")] == 3
    assert len(cells) == 6
    copy = tmp_path / "runs"
    shutil.copytree(root, copy)
    (store.replica_dir(copy, "cpu-2t", "mnist1d", "cnn1d", "ALGO", 1) / store.MANIFEST).unlink()  # interrupted
    assert analysis.held(copy).set_index(["hardware", "setting"]).at[("cpu-2t", "ALGO"), "replicas"] == 1
    assert analysis.held(tmp_path / "nothing").empty


def test_check_selection_names_the_bad_value_and_lists_the_store(root, tmp_path):
    analysis.check_selection(root, dataset="mnist1d", model="cnn1d", hardware="cpu-2t", setting=["ALGO", "ULP"])
    with pytest.raises(ValueError, match=r"dataset 'digts' is not in the run store, which holds: mnist1d$"):
        analysis.check_selection(root, dataset="digts")
    with pytest.raises(ValueError, match=r"model 'cnn' .* holds: cnn1d$"):
        analysis.check_selection(root, model="cnn")
    with pytest.raises(ValueError, match=r"setting 'ALG' .* holds: ALGO, CONTROL, ULP$"):
        analysis.check_selection(root, setting=["ALGO", "ALG"])
    with pytest.raises(ValueError, match=r"hardware 'cpu1t' .* holds: cpu-1t, cpu-1t-avx2, cpu-2t$"):
        analysis.check_selection(root, hardware="cpu1t")
    with pytest.raises(ValueError, match="unknown selection key"):
        analysis.check_selection(root, datasets="mnist1d")
    # names the package knows but the store lacks are missing runs, which the chapters show as such
    analysis.check_selection(root, dataset="mnist1d_groups", model="mlp1d", setting="INIT", hardware="cpu-8t-avx2")
    analysis.check_selection(root, hardware="cuda-nvidia-h100-80gb-hbm3", dataset=None)
    analysis.check_selection(tmp_path / "empty", dataset="digts")  # nothing to list: the chapter says so


def test_load_settings_is_load_runs_of_those_settings(root, runs):
    part = analysis.load_settings(root, ["CONTROL", "ULP"], dataset="mnist1d")
    want = runs.select(setting=["CONTROL", "ULP"])
    cols = ["hardware", "setting", "replica", "weights_hash"]
    pd.testing.assert_frame_equal(part.replicas[cols], want.replicas[cols])
    assert len(part.predictions) == len(want.predictions) == 9 * 4 and len(part.history) == 9 * 2
    assert analysis.load_settings(root, ["INIT"]).replicas.empty


def test_load_summary_is_load_runs_without_predictions(root, runs, tmp_path):
    summary = analysis.load_summary(root)
    cols = list(summary.replicas.columns)
    assert {"path", "train_seconds", "git_commit", "varied", "deterministic"} <= set(cols)
    pd.testing.assert_frame_equal(summary.replicas, runs.replicas[cols])
    pd.testing.assert_frame_equal(summary.history, runs.history[list(summary.history.columns)])
    assert summary.predictions.empty and summary.problems == []
    pd.testing.assert_frame_equal(analysis.runs_table(summary), analysis.runs_table(runs))
    copy = tmp_path / "runs"
    shutil.copytree(root, copy)
    bad = store.replica_dir(copy, "cpu-2t", "mnist1d", "cnn1d", "ALGO", 1)
    (bad / "history.parquet").write_bytes(b"damaged")
    damaged = analysis.load_summary(copy)
    assert damaged.problems == [(str(bad), "history.parquet fails its SHA-256 checksum")]
    assert len(damaged.replicas) == len(runs.replicas) - 1
    assert analysis.load_summary(tmp_path / "nothing").replicas.empty


# ----------------------------------------------------------------------------- tooling
def test_tooling_churn_by_hand(runs):
    c = analysis.tooling_churn(runs, dataset="mnist1d", model="cnn1d")
    assert list(c.columns) == analysis.TOOLING_COLUMNS
    by = {g: f for g, f in c.groupby("group", sort=False)}
    assert list(by) == list(analysis.TOOLING_GROUPS)
    control = by["configuration, CONTROL's seeds"].set_index("hardware")
    # one value per configuration (replica 0): cpu-2t flips example 3, avx2 the same predictions
    assert control["churn"].to_dict() == {"cpu-1t-avx2": 0.0, "cpu-2t": 0.25}
    assert not control["identical"].any() and (control["replica"] == 0).all()
    algo = by["configuration, ALGO's seeds"]
    assert algo[["hardware", "replica", "churn"]].values.tolist() == [["cpu-2t", 0, 0.25], ["cpu-2t", 1, 0.0]]
    assert algo["identical"].tolist() == [False, True] and algo["other"].tolist()[0] == "cpu-1t/ALGO/0"
    ulp = by["one-ULP poke"]
    assert ulp["churn"].tolist() == [0.0, 0.25, 0.5] and ulp["identical"].tolist() == [True, False, False]
    seeds = by["ALGO seeds"]
    assert seeds[["replica", "other", "churn"]].values.tolist() == [
        [0, "cpu-1t/ALGO/1", 0.25],
        [2, "cpu-1t/ALGO/3", 0.75],
    ]
    # another reference: the others against cpu-2t; the ULP cell lives on cpu-1t only, so no poke
    other = analysis.tooling_churn(runs, dataset="mnist1d", model="cnn1d", reference="cpu-2t")
    assert list(dict.fromkeys(other["group"])) == [g for g in analysis.TOOLING_GROUPS if g != "one-ULP poke"]
    assert other.loc[other["group"] == "ALGO seeds", "churn"].tolist() == [0.5]  # cpu-2t's ALGO 0 vs 1
    assert analysis.tooling_churn(runs, dataset="digits", model="cnn1d").empty


def exact_p(a: np.ndarray, b: np.ndarray) -> float:
    """The exact two-sided permutation p-value of the difference in means, over every split."""
    x = np.concatenate([a, b])
    obs = abs(a.mean() - b.mean())
    diffs = []
    for idx in itertools.combinations(range(len(x)), len(a)):
        m = np.zeros(len(x), dtype=bool)
        m[list(idx)] = True
        diffs.append(abs(x[m].mean() - x[~m].mean()))
    return float(np.mean(np.asarray(diffs) >= obs - 1e-12))


def test_tooling_tests_are_permutation_tests_of_means():
    rng = np.random.default_rng(3)
    groups = analysis.TOOLING_GROUPS
    values = {
        groups[0]: rng.normal(0.05, 0.01, 5),
        groups[1]: rng.normal(0.06, 0.01, 6),
        groups[2]: rng.normal(0.05, 0.01, 7),
        groups[3]: rng.normal(0.20, 0.01, 4),
    }
    churn = pd.DataFrame([{"group": g, "churn": v} for g, vs in values.items() for v in vs])
    t = analysis.tooling_tests(churn, n=4000)
    assert list(t["name"]) == [name for name, _, _ in analysis.TOOLING_TESTS]
    assert list(t.columns) == analysis.TEST_COLUMNS and (t["family"] == "tooling").all()
    for row in t.itertuples():
        a, b = values[row.a], values[row.b]
        assert row.observed == pytest.approx(a.mean() - b.mean()) and row.effect == pytest.approx(row.observed)
        assert row.effect_lo < row.effect < row.effect_hi
        assert (row.n_a, row.n_b) == (len(a), len(b))
        # Monte Carlo with 4000 relabellings: within 0.03 of the exact p-value (SE <= 0.008)
        assert row.pvalue == pytest.approx(max(exact_p(a, b), 1 / 4001), abs=0.03)
    np.testing.assert_allclose(t["p_adjusted"], study_stats.holm(t["pvalue"].to_numpy()))
    # new seeds churn four times as much: rejected; the two configurations' groups are alike
    assert t.set_index("name").at["tooling_control_vs_seeds", "p_adjusted"] < 0.05
    # a side with fewer than 2 values gives no row
    few = churn[(churn["group"] != groups[2]) | (churn.index == churn[churn["group"] == groups[2]].index[0])]
    assert list(analysis.tooling_tests(few, n=200)["name"]) == ["tooling_control_vs_seeds", "tooling_algo_vs_seeds"]
    assert analysis.tooling_tests(churn.iloc[:0], n=200).empty


def test_tooling_claims_are_worded_from_the_tests():
    rows = pd.DataFrame(
        [
            {"family": "tooling", "name": "tooling_control_vs_ulp", "a": analysis.TOOLING_GROUPS[0],
             "b": analysis.TOOLING_GROUPS[2], "test": "permutation (9 relabellings)", "statistic": "s",
             "observed": 0.01, "effect": 0.01, "effect_lo": -0.002, "effect_hi": 0.02, "n_a": 7, "n_b": 100,
             "pvalue": 0.03, "p_adjusted": 0.06},
            {"family": "tooling", "name": "tooling_control_vs_seeds", "a": analysis.TOOLING_GROUPS[0],
             "b": analysis.TOOLING_GROUPS[3], "test": "permutation (9 relabellings)", "statistic": "s",
             "observed": -0.1, "effect": -0.1, "effect_lo": -0.12, "effect_hi": -0.08, "n_a": 7, "n_b": 50,
             "pvalue": 0.0005, "p_adjusted": 0.001},
        ]
    )  # fmt: skip
    ulp, seeds = findings.tooling_claims(rows)
    assert ulp.verdict == "not established" and seeds.verdict == "established"
    assert findings.word(ulp) == (
        "A change of tooling configuration with CONTROL's seeds and a one-ULP poke of CONTROL move test "
        "predictions by amounts the data cannot tell apart (difference in mean churn 1.00 points, 95 % CI "
        "-0.20 to 2.00, n = 7 and 100 comparisons, p = 0.06 after Holm)"
    )
    assert findings.word(seeds).startswith(
        "A change of tooling configuration with CONTROL's seeds moves fewer test predictions than a change of "
        "every algorithmic seed (two ALGO replicas) (difference in mean churn -10.00 points"
    )
    assert list(findings.claim_values([ulp, seeds])) == [
        "claim_tooling_control_vs_ulp",
        "claim_tooling_control_vs_seeds",
    ]


def test_tooling_values_by_hand(runs):
    control = runs.select(setting="CONTROL")
    compare = analysis.hardware_compare(control)
    churn = analysis.tooling_churn(runs, dataset="mnist1d", model="cnn1d")
    v = findings.tooling_values(compare, analysis.identity(control), churn)
    # pairs: (1t, 1t-avx2) 0, (1t, 2t) 1/4, (1t-avx2, 2t) 1/4: mean 1/6
    assert v["tooling_labels"] == "cpu-1t, cpu-1t-avx2, cpu-2t" and v["tooling_n_pairs"] == "3"
    assert v["tooling_churn_mean"] == "16.67 %" and v["tooling_churn_min"] == "0.00 %"
    assert v["tooling_churn_max"] == "25.00 %" and v["tooling_pair_min"] == "cpu-1t and cpu-1t-avx2"
    assert v["tooling_identical_pairs"] == "0 of 3" and v["tooling_identical_within"] == "3 of 3"
    assert v["tooling_mean_ulp"] == "25.00 % (n = 3)" and v["tooling_mean_seeds"] == "50.00 % (n = 2)"
    assert v["tooling_ulp_identical"] == "1 of 3"
    empty = findings.tooling_values(compare.iloc[:0], analysis.identity(control).iloc[:0], churn.iloc[:0])
    assert empty["tooling_churn_mean"] == "n/a" and empty["tooling_mean_control"] == "n/a (n = 0)"


def test_tooling_times_by_hand(runs):
    t = analysis.tooling_times(runs).set_index("hardware")
    # cpu-1t: CONTROL 1 s and 2 s, ALGO 4 x 1 s, ULP 3 x 1 s: median 1, max 2
    assert t.loc["cpu-1t", ["replicas", "seconds_median", "seconds_min", "seconds_max"]].tolist() == [9, 1, 1, 2]
    assert t.loc["cpu-2t", "threads"] == 2 and t.loc["cpu-2t", "cpu_count"] == 2
    assert analysis.tooling_times(runs.select(setting="INIT")).empty


def test_runs_table_summarises_each_cell(runs):
    t = analysis.runs_table(runs).set_index(["hardware", "setting"])
    algo = t.loc[("cpu-1t", "ALGO"), "identical"]
    assert t.loc[("cpu-1t", "CONTROL"), "identical"] and algo is not None and not algo
    assert t.loc[("cpu-1t", "CONTROL"), "train_seconds"] == pytest.approx(1.5)
    assert t.loc[("cpu-1t", "ALGO"), "git_commit"] == "abc" and t.loc[("cpu-2t", "ALGO"), "replicas"] == 2
    # as the manifests record the settings: CONTROL promises the same bits, ALGO and ULP do not
    assert t["expects_identical"].to_dict() == {(hw, s): s == "CONTROL" for hw, s in t.index}
    one = analysis.runs_table(runs.select(setting="ALGO", replica=0, hardware="cpu-2t"))
    assert one["identical"].tolist() == [None]  # one replica: nothing to compare


# ----------------------------------------------------------------------------- charts
def test_tooling_matrix_is_symmetric_with_the_within_churn_on_the_diagonal(runs):
    compare = analysis.hardware_compare(runs.select(setting="CONTROL"))
    spec = charts.tooling_matrix(compare).to_dict()
    (data,) = spec["datasets"].values()
    cell = {(r["hardware_a"], r["hardware_b"]): r["churn"] for r in data}
    assert len(cell) == 9 and cell[("cpu-2t", "cpu-1t")] == cell[("cpu-1t", "cpu-2t")] == 0.25
    assert cell[("cpu-2t", "cpu-2t")] == 0.0
    assert spec["layer"][0]["encoding"]["color"]["scale"]["scheme"] == "greys"  # neutral, no setting colours
    assert spec["layer"][0]["encoding"]["color"]["legend"]["format"] == ".1%"


def test_tooling_churn_and_seconds_charts(runs):
    churn = analysis.tooling_churn(runs, dataset="mnist1d", model="cnn1d")
    spec = charts.tooling_churn_chart(churn).to_dict()
    ticks = spec["layer"][0]
    assert ticks["mark"]["color"] == charts.TOOLING_GREY
    assert ticks["encoding"]["y"]["sort"] == list(analysis.TOOLING_GROUPS)
    assert ticks["encoding"]["x"]["axis"]["format"] == ".1%"
    small = churn.assign(churn=churn["churn"] / 100)  # below 2 %: ticks step by tenths of a percent
    assert charts.tooling_churn_chart(small).to_dict()["layer"][0]["encoding"]["x"]["axis"]["format"] == ".2%"
    times = analysis.tooling_times(runs)
    seconds = charts.train_seconds_chart(times).to_dict()
    assert seconds["layer"][0]["encoding"]["x"]["field"] == "seconds_median"
    assert seconds["layer"][1]["encoding"]["x2"]["field"] == "seconds_max"
    assert not math.isnan(times["seconds_median"].sum())
