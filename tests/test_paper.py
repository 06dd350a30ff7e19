"""The book beside the paper (26_paper) and the downloads of the runs chapter (11_runs).

The paper's values are read from the one committed file, data/paper_results.csv, and checked;
the side-by-side table is built from hand-made frames whose expected text is worked out by hand;
the run store summary is exported from real replica folders copied out of the committed store,
and the committed downloads must describe the committed store and overhead sweeps.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nnrandomness import analysis, findings, overhead, store

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "data" / "paper_results.csv"
DOWNLOADS = ROOT / "data" / "downloads"
RUNS = ROOT / "data" / "runs"


# ----------------------------------------------------------------------------- the paper's values
def test_the_committed_paper_values_read_and_cite_every_row():
    paper = findings.read_paper_results(PAPER)
    assert list(paper.columns) == findings.PAPER_COLUMNS and len(paper)
    assert all(s.strip() for s in paper["source"])
    # The abstract's three maxima, one per GPU generation, in percent.
    maxima = paper[paper["quantity"] == "determinism_overhead_max"].set_index("hardware")["value"]
    assert maxima.to_dict() == {"P100": 746.0, "V100": 241.0, "T4": 196.0}
    statements = paper[paper["value"].isna()]
    assert all(c.strip() for c in statements["claim"])  # a row without a number quotes the paper's words


def write_csv(tmp_path: Path, rows: list[dict], columns=None) -> Path:
    path = tmp_path / "paper.csv"
    pd.DataFrame(rows, columns=columns or findings.PAPER_COLUMNS).to_csv(path, index=False)
    return path


GOOD = {
    "quantity": "churn",
    "model": "ResNet-18",
    "dataset": "CIFAR-10",
    "setting": "ALGO",
    "hardware": "V100",
    "value": "0.05",
    "unit": "fraction",
    "claim": "",
    "source": "a table",
}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"quantity": "chrun"}, "quantity 'chrun' is not one of ['acc_sd', 'churn'"),
        ({"setting": "ALGO_IMPL"}, "setting 'ALGO_IMPL' is not one of ['', 'ALGO+IMPL'"),
        ({"unit": "percent"}, "unit 'percent' is not one of ['%', 'fraction', '']"),
        ({"value": "five"}, "value 'five' is not a number"),
        ({"source": " "}, "row 2: no source"),
        ({"value": "", "claim": ""}, "neither a value nor a quoted claim"),
    ],
)
def test_a_bad_paper_row_is_refused_naming_it(tmp_path, change, message):
    path = write_csv(tmp_path, [GOOD, {**GOOD, **change}])
    with pytest.raises(ValueError, match="row 3") as e:
        findings.read_paper_results(path)
    assert message.replace("row 2", "row 3") in str(e.value)


def test_paper_columns_must_be_exactly_the_known_ones(tmp_path):
    path = write_csv(
        tmp_path, [{k: v for k, v in GOOD.items() if k != "claim"}], [c for c in findings.PAPER_COLUMNS if c != "claim"]
    )
    with pytest.raises(ValueError, match="expected \\['quantity'"):
        findings.read_paper_results(path)


# ----------------------------------------------------------------------------- side by side
def paper_frame(tmp_path: Path) -> pd.DataFrame:
    rows = [
        {**GOOD},  # 0: churn on a V100, a number of ours on the CPU beside it
        {**GOOD, "setting": "IMPL", "quantity": "acc_sd", "value": "0.002"},  # 1: tooling noise on a GPU
        {
            **GOOD,
            "quantity": "determinism_overhead_max",
            "setting": "",
            "hardware": "P100",
            "value": "746",
            "unit": "%",
        },
        {**GOOD, "quantity": "l2", "setting": "CONTROL", "value": "", "unit": "", "claim": "zero"},  # 3: not ours
        {**GOOD, "quantity": "acc_sd", "setting": "", "hardware": "GPU", "value": "", "unit": "", "claim": "flat"},
    ]
    return findings.read_paper_results(write_csv(tmp_path, rows))


def ours_frame(extra: list[dict] = ()) -> pd.DataFrame:
    cpu = {"hardware": "cpu-1t", "dataset": "mnist1d", "model": "cnn1d", "unit": "fraction", "text": ""}
    rows = [
        {**cpu, "quantity": "churn", "setting": "ALGO", "value": 0.0492, "lo": 0.048, "hi": 0.0504, "n": 100},
        {**cpu, "quantity": "acc_sd", "setting": "IMPL", "value": 0.0, "lo": 0.0, "hi": 0.0, "n": 2},
        {**cpu, "quantity": "acc_sd", "setting": "", "value": 0.0049, "lo": np.nan, "hi": np.nan, "n": 100}
        | {"text": "ALGO: 0.49 % (n=100)"},
        {**cpu, "quantity": "determinism_overhead_max", "setting": "", "value": 7.0, "lo": 2.5, "hi": 9.4, "n": 9}
        | {"unit": "%", "model": "mediumcnn_k7", "dataset": "synthetic 32 px"},
        *extra,
    ]
    return pd.DataFrame(rows, columns=findings.OURS_COLUMNS)


def test_side_by_side_labels_every_row(tmp_path):
    side = findings.paper_comparison(paper_frame(tmp_path), ours_frame())
    assert list(side.columns) == findings.COMPARISON_COLUMNS and len(side) == 5
    churn, impl, cost, l2, flat = (side.iloc[i] for i in range(5))
    # 0.05 as a fraction prints as 5.00 %; ours 0.0492 [0.048, 0.0504] as 4.92 % [4.80, 5.04] with n.
    assert (churn["paper"], churn["ours"]) == ("5.00 %", "4.92 % [4.80, 5.04] (n=100)")
    assert churn["comparison"] == "comparable in kind only: different model, dataset, hardware"
    assert churn["ours: cell"] == "cpu-1t/mnist1d/cnn1d"
    # IMPL on a GPU and the GPU's overhead: no CPU number beside them, however close in name.
    assert (impl["ours"], impl["comparison"]) == ("-", findings.GPU_ONLY)
    assert (cost["paper"], cost["ours"], cost["comparison"]) == ("746 %", "-", findings.GPU_ONLY)
    assert cost["setting"] == "-"
    assert (l2["paper"], l2["comparison"]) == ("\u201czero\u201d", findings.NOT_MEASURED)
    assert (flat["setting"], flat["ours"]) == ("every setting", "ALGO: 0.49 % (n=100)")


def test_a_gpu_row_takes_our_runs_on_that_gpu(tmp_path):
    p100 = {"hardware": "cuda-tesla-p100", "dataset": "synthetic 224 px", "model": "vgg16", "unit": "%", "text": ""}
    mine = {**p100, "quantity": "determinism_overhead_max", "setting": "", "value": 512.3, "lo": 500.0, "hi": 530.0}
    side = findings.paper_comparison(paper_frame(tmp_path), ours_frame([mine | {"n": 4}]))
    cost = side.iloc[2]
    assert cost["ours"] == "+512.3 % [500.0, 530.0] (n=4)"
    assert cost["comparison"] == "comparable in kind only: different model, dataset"  # same GPU
    assert cost["ours: cell"] == "cuda-tesla-p100/synthetic 224 px/vgg16"


def sweep() -> pd.DataFrame:
    """Two models, baseline and det_full, medians and quartiles in ms chosen for round overheads."""
    rows = []
    for model, base, det, q1, q3 in (("a", 10.0, 11.0, 10.5, 12.0), ("b", 20.0, 19.0, 18.0, 21.0)):
        common = {"model": model, "status": "ok", "image_size": 32, "hardware": "cpu-1t"}
        rows.append({**common, "configuration": "baseline", "median_ms": base, "q1_ms": base, "q3_ms": base})
        rows[-1]["overhead_pct"] = 0.0
        rows.append({**common, "configuration": "det_full", "median_ms": det, "q1_ms": q1, "q3_ms": q3})
        rows[-1]["overhead_pct"] = (det / base - 1) * 100
    return pd.DataFrame(rows)


def test_ours_from_topline_spread_and_sweeps():
    key = {"hardware": "cpu-1t", "dataset": "mnist1d", "model": "cnn1d"}
    top = pd.DataFrame(
        [
            {**key, "setting": "ALGO", "n_replicas": 10, "acc_std": 0.005, "acc_std_lo": 0.004, "acc_std_hi": 0.009}
            | {"churn": 0.05, "churn_lo": 0.04, "churn_hi": 0.06, "l2": 27.0, "l2_lo": 26.0, "l2_hi": 28.0},
            {**key, "setting": "CONTROL", "n_replicas": 2, "acc_std": 0.0, "acc_std_lo": np.nan, "acc_std_hi": np.nan}
            | {"churn": 0.0, "churn_lo": np.nan, "churn_hi": np.nan, "l2": 0.0, "l2_lo": np.nan, "l2_hi": np.nan},
        ]
    )
    spread = pd.DataFrame(
        [
            {**key, "setting": "ALGO", "n_replicas": 10, "acc_std": 0.005, "class_std_max": 0.02, "class_max": 4.0},
            {**key, "setting": "CONTROL", "n_replicas": 2, "acc_std": 0.0, "class_std_max": 0.0, "class_max": None},
        ]
    )
    ours = findings.paper_ours(top, spread, {"cpu-1t": sweep()}).set_index(["quantity", "setting"])
    assert ours.loc[("churn", "ALGO"), ["value", "lo", "hi", "n"]].tolist() == [0.05, 0.04, 0.06, 10]
    assert ours.loc[("class_acc_sd_max", "ALGO"), "text"] == "2.00 % (class 4; top-1 SD 0.50 %, n=10)"
    assert ours.loc[("class_acc_sd_max", "CONTROL"), "text"] == "0.00 % (no class moves; top-1 SD 0.00 %, n=2)"
    # Overheads: a 11/10 - 1 = +10 %, b 19/20 - 1 = -5 %; a's quartiles 10.5 and 12 over 10 ms: 5 % to 20 %.
    top_cost = ours.loc[("determinism_overhead_max", "")]
    assert top_cost["model"] == "a" and top_cost["n"] == 2
    assert [top_cost[k] for k in ("value", "lo", "hi")] == pytest.approx([10.0, 5.0, 20.0])
    assert ours.loc[("determinism_overhead_range", ""), "text"] == "-5.0 % (b) to +10.0 % (a) over 2 models"
    # A statement about every setting is answered by ALGO's row, saying so.
    assert ours.loc[("acc_sd", ""), "text"] == "ALGO: 0.50 % [0.40, 0.90] (n=10)"


# ----------------------------------------------------------------------------- downloads
@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> Path:
    """Three real replicas copied out of the committed store, and a fourth one damaged."""
    root = tmp_path_factory.mktemp("store") / "runs"
    for setting, replica in (("ALGO", 0), ("ALGO", 1), ("CONTROL", 0), ("CONTROL", 1)):
        rel = Path("cpu-1t", "mnist1d", "cnn1d", setting, f"replica-{replica}")
        shutil.copytree(RUNS / rel, root / rel)
    (root / "cpu-1t/mnist1d/cnn1d/CONTROL/replica-1/predictions.parquet").write_bytes(b"torn")
    return root


def test_replica_export_has_one_row_per_complete_replica(small_store, tmp_path):
    table = analysis.replica_export(small_store, repository=ROOT)  # a copy outside the repository
    assert list(table.columns) == analysis.REPLICA_EXPORT_COLUMNS
    assert table[store.KEYS].astype(str).values.tolist() == [
        ["cpu-1t", "mnist1d", "cnn1d", "ALGO", "0"],
        ["cpu-1t", "mnist1d", "cnn1d", "ALGO", "1"],
        ["cpu-1t", "mnist1d", "cnn1d", "CONTROL", "0"],
    ]  # the torn replica fails its checksum and is left out
    manifest = json.loads((small_store / "cpu-1t/mnist1d/cnn1d/ALGO/replica-1/manifest.json").read_text())
    row = table.iloc[1]
    assert [int(row[f"seed_{s}"]) for s in ("init", "order", "aug", "dropout")] == [
        manifest["seeds"][s] for s in ("init", "order", "aug", "dropout")
    ]
    assert (
        row["weights_hash"] == manifest["weights_hash"] and row["test_accuracy"] == manifest["final"]["test_accuracy"]
    )
    assert row["varied"] == "aug+dropout+init+order" and table.iloc[2]["varied"] == ""
    commit = manifest["environment"]["git_commit"]
    known = subprocess.run(["git", "show", "-s", "--format=%cI", commit], cwd=ROOT, capture_output=True, text=True)
    expected = known.stdout.strip() if known.returncode == 0 else ""
    assert row["git_commit"] == commit and row["git_commit_date"] == expected

    paths = analysis.write_export(table, tmp_path / "runs")
    assert [p.name for p in paths] == ["runs.csv", "runs.parquet"]
    first = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    for p in paths:
        p.unlink()
    analysis.write_export(analysis.replica_export(small_store, repository=ROOT), tmp_path / "runs")
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths] == first  # byte-stable
    back = pd.read_parquet(paths[1])
    assert int(back.loc[1, "seed_init"]) == manifest["seeds"]["init"]  # 64-bit seeds survive exactly
    assert pd.read_csv(paths[0]).columns.tolist() == analysis.REPLICA_EXPORT_COLUMNS


def test_commit_dates_of_unknown_commits_are_empty():
    assert analysis.commit_dates(["0" * 40, "not a sha", ""], ROOT) == {"0" * 40: "", "not a sha": ""}


def test_the_committed_downloads_describe_the_committed_store():
    """The files 11_runs links to: every complete replica of data/runs once, every overhead row."""
    runs = pd.read_csv(DOWNLOADS / "runs.csv")
    assert runs.columns.tolist() == analysis.REPLICA_EXPORT_COLUMNS
    manifests = sorted(p.parent.relative_to(RUNS).as_posix() for p in RUNS.glob("*/*/*/*/*/manifest.json"))
    assert sorted(runs["path"]) == manifests
    assert runs["git_commit"].notna().all() and pd.read_parquet(DOWNLOADS / "runs.parquet").shape == runs.shape
    sweeps = overhead.read_all(overhead.store_root(repository=ROOT))
    costs = pd.read_csv(DOWNLOADS / "overhead.csv")
    assert len(costs) == sum(len(s) for s in sweeps.values()) and set(costs["hardware"]) == set(sweeps)
    assert {"model", "configuration", "overhead_pct", "git_commit", "git_commit_date"} <= set(costs.columns)
    assert not math.isnan(costs["overhead_pct"].max())


def test_ours_table_shows_each_value_once_as_text():
    shown = findings.ours_table(ours_frame())
    assert list(shown.columns) == ["quantity", "setting", "cell", "ours"]
    # The copy that answers the statement about every setting (text 'ALGO: ...') is not repeated.
    assert shown["ours"].tolist() == [
        "4.92 % [4.80, 5.04] (n=100)",
        "0.00 % [0.00, 0.00] (n=2)",
        "+7.0 % [2.5, 9.4] (n=9)",
    ]
    assert shown["setting"].tolist() == ["ALGO", "IMPL", "-"]
    assert shown["quantity"].iloc[2] == findings.PAPER_QUANTITIES["determinism_overhead_max"]
