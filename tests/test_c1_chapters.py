"""The pieces of 20_topline and 25_claims (brief C1): SD intervals, churn against training length,
churn between architectures, the claims' short forms and the two new charts, checked on a tiny
hand-made MNIST-1D-like store against numbers computed by hand (the fractions in the comments)."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from test_findings import family_frame

from nnrandomness import analysis, charts, findings, store
from nnrandomness import stats as study_stats
from nnrandomness.train import ReplicaResult, ReplicaSpec

LABELS = [0, 1, 2, 1]
CELL = {"hardware": "cpu-1t", "dataset": "mnist1d", "model": "cnn1d"}
CONTROL = {1: [0, 0, 0, 0], 3: [0, 1, 2, 0], 5: [0, 1, 2, 1]}  # CONTROL's predictions after epochs 1, 3 and 5
# ULP: replica 0 is CONTROL at every epoch; 1 differs on example 1 after epoch 1 and is CONTROL after;
# 2 differs on example 3 at the end only.
ULP = [
    {1: [0, 0, 0, 0], 3: [0, 1, 2, 0], 5: [0, 1, 2, 1]},
    {1: [0, 1, 0, 0], 3: [0, 1, 2, 0], 5: [0, 1, 2, 1]},
    {1: [0, 0, 0, 0], 3: [0, 1, 2, 0], 5: [0, 1, 2, 2]},
]
# ALGO on two models: cnn1d's three replicas differ pairwise on 1, 1 and 2 of 4 examples (churn 1/3);
# mlp1d's on 2, 2 and 4 (churn 2/3).
ALGO = {
    "cnn1d": [[0, 1, 2, 1], [0, 1, 2, 2], [0, 1, 0, 2]],
    "mlp1d": [[0, 1, 2, 1], [1, 2, 2, 1], [1, 2, 0, 0]],
}


def result(model, setting, replica, by_epoch, final_epoch=5) -> ReplicaResult:
    """A hand-made replica without probabilities, with snapshots (every epoch but the last)."""
    preds = np.asarray(by_epoch[final_epoch])
    return ReplicaResult(
        spec=ReplicaSpec(
            dataset="mnist1d",
            model=model,
            setting=setting,
            replica=replica,
            epochs=final_epoch,
            snapshot_epochs=tuple(e for e in by_epoch if e != final_epoch),
            keep_probabilities=False,
        ),
        seeds={"init": 1, "order": 2, "aug": 3, "dropout": 4, "perturb": 5},
        history=pd.DataFrame({"epoch": [final_epoch], "test_accuracy": [0.5], "seconds": [0.1]}),
        predictions=preds,
        probabilities=None,
        labels=np.asarray(LABELS),
        groups=None,
        weights={"w": torch.arange(6, dtype=torch.float32) + replica},
        backend={"requested": {}, "effective": {}},
        environment={"torch": torch.__version__, "git_commit": "abc", "cpu_model": "test cpu"},
        timings={"train_seconds": 0.2},
        snapshots={e: np.asarray(p) for e, p in by_epoch.items() if e != final_epoch},
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for k in range(2):
        store.write_replica(root, "cpu-1t", result("cnn1d", "CONTROL", k, CONTROL))
    for k, by_epoch in enumerate(ULP):
        store.write_replica(root, "cpu-1t", result("cnn1d", "ULP", k, by_epoch))
    for model, rows in ALGO.items():
        for k, p in enumerate(rows):
            store.write_replica(root, "cpu-1t", result(model, "ALGO", k, {1: p, 5: p}))
    return store.load_runs(root, snapshots=True)


# ----------------------------------------------------------------------------- analysis
def test_sd_intervals_match_stats_and_need_five_replicas(runs):
    sd = analysis.sd_intervals(runs).set_index(["model", "setting"])
    assert list(analysis.sd_intervals(runs).columns) == analysis.SD_COLUMNS
    # cnn1d ALGO accuracies 1, 3/4, 1/2: SD 1/4; three replicas are too few for an interval.
    row = sd.loc[("cnn1d", "ALGO")]
    assert row["acc_sd"] == pytest.approx(0.25) and row["n_replicas"] == 3
    assert all(math.isnan(row[c]) for c in ["chi2_lo", "chi2_hi", "bonett_lo", "bonett_hi"])
    assert sd.loc[("cnn1d", "CONTROL"), "acc_sd"] == 0.0


def test_sd_intervals_with_enough_replicas(tmp_path):
    accs = [[0, 1, 2, 1], [0, 1, 2, 2], [0, 1, 0, 2], [1, 1, 2, 1], [0, 1, 2, 1]]  # accuracies 1, 3/4, 1/2, 3/4, 1
    for k, p in enumerate(accs):
        store.write_replica(tmp_path, "cpu-1t", result("cnn1d", "ALGO", k, {1: p, 5: p}))
    row = analysis.sd_intervals(store.load_runs(tmp_path)).iloc[0]
    values = np.array([1, 0.75, 0.5, 0.75, 1])
    for method in ("chi2", "bonett"):
        iv = study_stats.sd_interval(values, method=method)
        assert (row[f"{method}_lo"], row[f"{method}_hi"]) == pytest.approx((iv.low, iv.high))
        assert row[f"{method}_lo"] < row["acc_sd"] < row[f"{method}_hi"]
    text = findings.sd_ci_text(analysis.sd_intervals(store.load_runs(tmp_path)), "chi2").iloc[0]
    assert text.startswith(f"{100 * np.std(values, ddof=1):.2f} % [")


def test_churn_by_epoch_by_hand(runs):
    epochs = analysis.churn_by_epoch(runs, CELL, settings=["ULP", "ALGO"])
    assert list(epochs.columns) == analysis.EPOCH_COLUMNS
    ulp = epochs[epochs.setting == "ULP"].set_index("epoch")
    assert list(ulp.index) == [1, 3, 5]
    # Epoch 1: replica 1 differs from 0 and 2 on one example of 4: pairs 1/4, 0, 1/4 -> churn 1/6.
    # Epoch 3: all equal -> 0. Epoch 5: replica 2 differs on one example -> 1/6.
    assert ulp["churn"].tolist() == pytest.approx([1 / 6, 0, 1 / 6])
    # Replicas equal to CONTROL's at each epoch: 2, 3, 2 of 3, with Clopper-Pearson intervals.
    assert ulp["n_same"].tolist() == [2, 3, 2]
    iv = study_stats.clopper_pearson(2, 3)
    assert (ulp.at[1, "same_lo"], ulp.at[1, "same_hi"]) == pytest.approx((iv.low, iv.high))
    assert ulp.at[3, "same_share"] == 1.0 and ulp.at[3, "same_hi"] == 1.0
    assert ulp["churn_lo"].isna().all()  # 3 replicas: too few for a bootstrap interval
    # ALGO (stored only after epochs 1 and 5) has 1/3 churn at both, and none of its replicas is CONTROL at 1.
    algo = epochs[epochs.setting == "ALGO"].set_index("epoch")
    assert list(algo.index) == [1, 5] and algo["churn"].tolist() == pytest.approx([1 / 3, 1 / 3])
    assert algo.at[1, "n_same"] == 0 and algo.at[5, "n_same"] == 1  # replica 0 of ALGO ends as CONTROL
    # Without CONTROL in the view there is no share to count.
    final = analysis.churn_by_epoch(runs.select(setting="ULP"), CELL)
    assert final["epoch"].tolist() == [1, 3, 5] and final["same_share"].isna().all()


def test_churn_by_epoch_without_snapshots(tmp_path):
    for k, by_epoch in enumerate(ULP):
        store.write_replica(tmp_path, "cpu-1t", result("cnn1d", "ULP", k, by_epoch))
    epochs = analysis.churn_by_epoch(store.load_runs(tmp_path), CELL)
    assert epochs["epoch"].tolist() == [5] and epochs["churn"].tolist() == pytest.approx([1 / 6])


def test_architecture_tests_compare_churn_between_models(runs):
    tests = analysis.architecture_tests(runs, CELL, ["mlp1d", "cnn1d_bn", "cnn1d"], n=200)
    assert tests["name"].tolist() == ["churn_mlp1d_vs_cnn1d_algo"]  # cnn1d_bn absent, cnn1d itself skipped
    row = tests.iloc[0]
    assert (row["a"], row["b"], row["family"]) == ("ALGO on mlp1d", "ALGO on cnn1d", "architecture")
    assert row["effect"] == pytest.approx(2 / 3 - 1 / 3) and row["p_adjusted"] == row["pvalue"]
    (claim,) = findings.architecture_claims(tests)
    assert claim.not_established == "ALGO on mlp1d and ALGO on cnn1d give churn the data cannot tell apart"
    assert claim.established == "ALGO on mlp1d gives more churn than ALGO on cnn1d" and claim.n == "3 and 3"
    assert analysis.architecture_tests(runs, {**CELL, "model": "nothing"}, ["mlp1d"]).empty


# ----------------------------------------------------------------------------- findings
def claims(pvalues=(0.001, 0.4), effects=(0.005, -0.004)):
    frame = family_frame(pvalues, effects, settings=("INIT", "ORDER"), n=(100, 100))
    return findings.claims_from_tests(frame)


def test_compact_claims_table():
    table = findings.compact_claims_table(claims())
    assert list(table.columns) == findings.COMPACT_COLUMNS
    # Holm: 0.001 * 2 = 0.002; 0.4 stays 0.4 (monotone).
    assert table.iloc[0].tolist() == [
        "INIT gives more churn than ALGO",
        "0.50 points [0.30 to 0.70]",
        "100 and 100",
        "0.001",
        "0.002",
        "established",
    ]
    assert table.iloc[1]["claim"] == "ORDER and ALGO give churn the data cannot tell apart"
    assert table.iloc[1]["verdict"] == "not established" and findings.compact_claims_table([]).empty


def test_intro_claims_are_all_glued_and_the_undecided_counted():
    values = findings.intro_claim_values(claims())
    assert list(values) == [f"claim_{n}" for n in findings.INTRO_CLAIMS]
    assert values["claim_churn_init_vs_algo"].startswith("INIT gives more churn than ALGO (difference 0.50 points")
    assert values["claim_class_max_algo"] == findings.MISSING_CLAIM
    assert findings.undecided_text(claims()) == (
        "1 of the 2 tested claims are not established at 5 % after Holm: "
        "ORDER and ALGO give churn the data cannot tell apart."
    )
    assert findings.undecided_text(claims(), listed=False) == (
        "1 of the 2 tested claims are not established at 5 % after Holm."
    )
    assert findings.undecided_text(claims((0.001, 0.001))).startswith("Every one of the 2 tested claims")
    assert findings.undecided_text([]).startswith("No claim could be tested")


def test_interval_values_and_few_replicas_note():
    table = pd.DataFrame(
        {
            "setting": ["ALGO", "CONTROL"],
            "n_replicas": [100, 2],
            "acc_std": [0.0031, 0.0],
            "acc_std_lo": [0.0027, np.nan],
            "acc_std_hi": [0.0036, np.nan],
            "churn": [0.0712, 0.0],
            "churn_lo": [0.07, np.nan],
            "churn_hi": [0.0725, np.nan],
        }
    )
    values = findings.interval_values(table, {"acc_std": True, "churn": True})
    assert values["algo_acc_std_ci"] == "0.31 % [0.27, 0.36]" and values["algo_churn_ci"] == "7.12 % [7.00, 7.25]"
    assert values["control_churn_ci"] == "0.00 %" and values["ulp_churn_ci"] == "n/a"
    assert findings.few_replicas_note(table) == " (replicas too few for an interval: CONTROL 2)"
    assert findings.few_replicas_note(table.iloc[:1]) == ""


def test_twin_text(runs):
    twins = pd.DataFrame(
        {"hardware": ["cpu-1t"], "setting": ["IMPL"], "twin": ["CONTROL"], "n_matched": [2], "n_identical": [2]}
    )
    assert (
        findings.twin_text(twins)
        == "2 of 2 IMPL replicas on cpu-1t are bit-identical to CONTROL's with the same seeds."
    )
    assert findings.twin_text(analysis.twin_identity(runs)).startswith("The run store holds no replicas of IMPL")


# ----------------------------------------------------------------------------- charts
def test_churn_epochs_chart(runs):
    epochs = analysis.churn_by_epoch(runs, CELL)
    spec = charts.churn_epochs_chart(epochs).to_dict()
    left, right = spec["hconcat"]
    x = left["layer"][0]["encoding"]["x"]
    assert x["axis"]["values"] == [1, 3, 5] and x["axis"]["format"] == "d"  # one tick per stored epoch
    colour = left["layer"][0]["encoding"]["color"]["scale"]
    assert colour["domain"] == ["ALGO", "ULP"] and colour["range"] == [
        charts.SETTING_COLORS[s] for s in ("ALGO", "ULP")
    ]
    assert right["layer"][0]["encoding"]["y"]["scale"]["domain"] == [0, 1]
    assert all(t.get("title") for layer in left["layer"] for t in layer["encoding"]["tooltip"][1:])


def test_summary_chart_and_its_png(monkeypatch):
    main = pd.DataFrame(
        {
            "setting": ["ALGO", "ULP"],
            "n_replicas": [100, 100],
            "acc_mean": [0.94, 0.94],
            "acc_std": [0.003, 0.002],
            "acc_std_lo": [0.0026, 0.0017],
            "acc_std_hi": [0.0035, 0.0023],
            "churn": [0.07, 0.05],
            "churn_lo": [0.069, 0.049],
            "churn_hi": [0.071, 0.051],
        }
    )
    chart = charts.summary_chart(main)
    widths = [panel["width"] for panel in chart.to_dict()["hconcat"]]
    assert sum(widths) <= 650
    import myst_nb

    calls = []
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display: calls.append((name, value, display)))
    charts.glue_png("claims", "summary", chart)
    ((name, image, display),) = calls
    assert name == "fig-claims-summary-png" and display is False
    assert image.data[:8] == b"\x89PNG\r\n\x1a\n"


def test_sd_ci_text_keeps_rows():
    frame = pd.DataFrame(
        {"acc_sd": [0.01, np.nan], "chi2_lo": [0.008, np.nan], "chi2_hi": [0.012, np.nan], "bonett_lo": [0.007, 1]}
    )
    frame["bonett_hi"] = [0.013, 1]
    assert findings.sd_ci_text(frame, "bonett").tolist() == ["1.00 % [0.70, 1.30]", "n/a"]


def test_extra_test_sizes_come_as_the_lists_load_runs_gives(tmp_path):
    # load_runs gives extra_n as one size per extra set (a list): the direct variance reads it.
    for k, acc in enumerate([[0.9, 0.8], [0.7, 0.75], [0.8, 0.9]]):
        r = result("cnn1d", "ALGO", k, {1: LABELS, 5: LABELS})
        r = dataclasses.replace(r, extra_tests={"seeds": [1, 2], "n": [100, 100], "accuracy": acc})
        store.write_replica(tmp_path, "cpu-1t", r)
    runs = store.load_runs(tmp_path)
    assert runs.replicas["extra_n"].iloc[0] == [100, 100]
    row = analysis.variance_direct(runs, n=200).iloc[0]
    assert row["n_sets"] == 2 and row["n_per_set"] == 100
    # Mean covariance of the two sets' accuracies across replicas (the direct estimate), by hand.
    a, b = np.array([0.9, 0.7, 0.8]), np.array([0.8, 0.75, 0.9])
    assert row["direct_var"] == pytest.approx(np.cov(a, b)[0, 1])
