"""charts: the chapter figure builders (tidy frame in, chart out), checked on their specs (data,
encodings, titles), not on pixels; and charts.__all__ against what the notebooks use."""

import ast
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_analysis import root, runs, top  # noqa: F401 (module fixtures, shared with test_analysis)

from nnrandomness import analysis, charts, noise

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def datasets(spec: dict) -> list[list[dict]]:
    """The inline data sets of a chart's spec (Altair moves them to the top-level ``datasets``)."""
    return list(spec.get("datasets", {}).values())


def encodings(spec: dict) -> list[dict]:
    """Every encoding block in a (possibly nested) spec, depth first."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if "encoding" in node:
                found.append(node["encoding"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    return found


# ----------------------------------------------------------------------------- the public surface
def test_all_is_exact():
    public = {name for name in vars(charts) if not name.startswith("_")}
    assert all(hasattr(charts, name) for name in charts.__all__)
    assert len(charts.__all__) == len(set(charts.__all__))
    used = set()
    for path in NOTEBOOKS.glob("*.py"):
        used |= set(re.findall(r"\bcharts\.([A-Za-z_]\w*)", path.read_text(encoding="utf-8")))
    assert used, "the notebooks use charts"
    assert sorted(used - set(charts.__all__)) == [], "used by a notebook but not in charts.__all__"
    # the module's own functions and constants: every public one is exported (imports aside)
    tree = ast.parse(Path(charts.__file__).read_text(encoding="utf-8"))
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)} | {
        t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)
    }
    assert sorted((defined & public) - set(charts.__all__)) == [], "public but not in charts.__all__"


def test_settings_order_and_colours():
    # noise.SETTINGS' order in every legend; the colours are the book's (unchanged since the first chapter).
    assert charts.setting_sort() == list(noise.SETTINGS)
    assert list(charts.SETTING_COLORS) == list(noise.SETTINGS)
    assert charts.SETTING_COLORS == {
        "ALGO+IMPL": "#D55E00",
        "ALGO": "#0072B2",
        "IMPL": "#E69F00",
        "CONTROL": "#999999",
        "INIT": "#56B4E9",
        "ORDER": "#009E73",
        "AUG": "#CC79A7",
        "DROPOUT": "#F0E442",
        "ULP": "#000000",
        "ALGO+IMPL-PAPER": "#8F3E00",
        "ALGO-PAPER": "#004D80",
    }
    assert charts.setting_sort(["ULP", "CONTROL", "ALGO"]) == ["ALGO", "CONTROL", "ULP"]
    with pytest.raises(ValueError, match="unknown setting"):
        charts.setting_sort(["NOPE"])


# ----------------------------------------------------------------------------- shared pieces
def test_shared_charts_build_valid_specs(top):  # noqa: F811
    main = top[(top.hardware == "cpu-1t") & (top.dataset == "digits")]
    spec = charts.setting_points(main, "churn", lo="churn_lo", hi="churn_hi", axis_title="churn").to_dict()
    assert [layer["mark"]["type"] for layer in spec["layer"]] == ["rule", "point"]
    assert spec["layer"][1]["encoding"]["y"]["sort"] == ["ALGO+IMPL", "ALGO", "IMPL", "CONTROL", "ORDER"]
    faceted = charts.setting_points(main, "acc_std", axis_title="std").facet(row="model:N").to_dict()
    assert faceted["spec"]["layer"][0]["mark"]["type"] == "point"  # no interval columns: dots only
    assert charts.missing_chart("no runs").to_dict()["mark"]["type"] == "text"
    assert charts.setting_selection("pick").name == "pick"


# ----------------------------------------------------------------------------- chapter figures
def test_training_curves(runs):  # noqa: F811
    curves = analysis.training_curves(runs)
    spec = charts.training_curves(curves).to_dict()
    (data,) = datasets(spec)
    assert len(data) == len(curves) and {"panel", "test_accuracy", "replicas"} <= set(data[0])
    assert data[0]["panel"] == f"{data[0]['hardware']} {data[0]['dataset']}/{data[0]['model']}"
    assert spec["title"] == "Test accuracy during training" and spec["facet"]["field"] == "panel"
    assert spec["spec"]["encoding"]["color"]["scale"]["domain"] == charts.setting_sort(curves["setting"])


def test_accuracy_churn(top):  # noqa: F811
    main = top[(top.hardware == "cpu-1t") & (top.dataset == "digits")]
    spec = charts.accuracy_churn(main).to_dict()
    assert spec["title"] == "Accuracy spread and churn"
    left, right = spec["hconcat"]
    assert left["title"] == "Spread of top-1 accuracy" and right["title"] == "Predictive churn and its two parts"
    bars = right["layer"][0]
    assert bars["encoding"]["x"]["field"] == "share" and bars["encoding"]["opacity"]["field"] == "part"
    parts = next(d for d in datasets(spec) if "part" in d[0])
    assert len(parts) == 2 * len(main)  # one right one wrong, both wrong: per setting
    algo = {r["part"]: r["share"] for r in parts if r["setting"] == "ALGO"}
    assert algo == {"one right, one wrong": pytest.approx(1 / 2), "both wrong, differently": pytest.approx(1 / 12)}
    assert right["layer"][1]["encoding"]["x2"]["field"] == "churn_hi"


def test_per_class_chart(runs):  # noqa: F811
    classes = analysis.per_class(runs.select(hardware="cpu-1t", dataset="digits"))
    spread = analysis.per_class_spread(runs.select(hardware="cpu-1t", dataset="digits"), classes)
    spec = charts.per_class_chart(classes, spread).to_dict()
    left, right = spec["hconcat"]
    assert left["layer"][0]["mark"]["type"] == "tick" and left["layer"][1]["mark"]["shape"] == "diamond"
    assert right["transform"] == [{"filter": {"param": "pick_setting"}}]  # the right view follows the legend
    assert sorted(len(d) for d in datasets(spec)) == sorted([len(classes), len(spread)])


def test_subgroup_charts(runs):  # noqa: F811
    part = runs.select(dataset="digits_groups")
    subs = analysis.subgroups(part)
    spec = charts.subgroup_spread(subs, "parity").to_dict()
    (data,) = datasets(spec)
    assert sorted({r["subgroup"] for r in data}) == ["0 / parity=0", "0 / parity=1", "1 / parity=0", "1 / parity=1"]
    assert {r["subgroup"]: r["kind"] for r in data}["0 / parity=1"] == "rare"
    assert [v["encoding"]["y"]["field"] for v in spec["hconcat"]] == ["fnr_std", "fpr_std"]
    rates = analysis.subgroup_rates(part).merge(
        subs[["setting", "class", "group", "rare"]], on=["setting", "class", "group"]
    )
    spec = charts.subgroup_replicas(rates, "parity", "ALGO").to_dict()
    (data,) = datasets(spec)
    assert len(data) == len(rates) == 3 * 4 and set(data[0]) == {
        "subgroup",
        "kind",
        "replica",
        "fnr",
        "n_subgroup",
        "fn",
        "tp",
    }
    assert spec["encoding"]["y"]["sort"] == ["0 / parity=0", "0 / parity=1", "1 / parity=0", "1 / parity=1"]
    assert spec["title"] == "False negative rate of each subgroup in each ALGO replica"


def test_per_example_charts(runs):  # noqa: F811
    part = runs.select(hardware="cpu-1t", dataset="digits")
    examples = analysis.per_example(part)
    spec = charts.right_counts(examples, analysis.instability_summary(examples)).to_dict()
    (data,) = datasets(spec)
    algo = {r["right"]: r["examples"] for r in data if r["setting"] == "ALGO"}
    # ALGO right counts per example: 1, 2, 3, 2 of 3 replicas; zeros kept for 0 replicas right
    assert algo == {0: 0, 1: 1, 2: 2, 3: 1}
    assert max(r["right"] for r in data if r["setting"] == "ORDER") == 6
    chosen = analysis.unstable_examples(examples, "ALGO", 2)
    assert chosen["example"].tolist() == [0, 1]  # three-way split first, then 2 of 3 agreeing (smallest id)
    images = np.arange(4 * 1 * 2 * 2).reshape(4, 1, 2, 2) * 10
    votes = analysis.examples_votes(part.select(setting="ALGO").predictions, chosen["example"])
    spec = charts.unstable_examples(chosen, images, votes, "ALGO").to_dict()
    pixels = next(d for d in datasets(spec) if "row" in d[0])
    assert len(pixels) == 2 * 4 and pixels[0] == {"example": "#0 (label 0)", "row": 0, "col": 0, "value": 0}
    assert spec["title"] == "The 2 test examples the ALGO replicas agree on least"
    dv = analysis.distribution_variance(part)
    spec = charts.variance_chart(dv).to_dict()
    (data,) = datasets(spec)
    assert len(data) == 2 * len(dv) and {r["kind"] for r in data} == {"observed", "predicted (independent examples)"}
    assert spec["encoding"]["shape"]["field"] == "kind"


def test_background_chapter_charts():
    grid = pd.DataFrame(
        {
            "replica": ["r0", "r0", "r1", "r1"],
            "example": ["e0", "e1"] * 2,
            "prediction": ["cat", "dog", "cat", "cat"],
            "label": ["cat", "dog"] * 2,
            "correct": [True, True, True, False],
        }
    )
    spec = charts.prediction_grid(grid).to_dict()
    assert [layer["mark"]["type"] for layer in spec["layer"]] == ["rect", "text"]
    assert spec["layer"][0]["encoding"]["color"]["scale"]["domain"] == [True, False]
    assert datasets(spec) == [grid.to_dict("records")]
    growth = pd.DataFrame(
        {
            "epochs": [1, 2, 1],
            "comparison": ["one ULP", "one ULP", "two threads"],
            "L2 distance": [1e-6, 1e-3, 1e-5],
            "differing predictions": [0, 3, 1],
            "reference accuracy": [0.9, 0.95, 0.9],
        }
    )
    spec = charts.divergence_growth(growth, {"one ULP": "ULP", "two threads": "IMPL"}, (1, 2), 359).to_dict()
    scale = spec["hconcat"][0]["encoding"]["color"]["scale"]
    assert scale == {
        "domain": ["one ULP", "two threads"],
        "range": [charts.SETTING_COLORS["ULP"], charts.SETTING_COLORS["IMPL"]],
    }
    assert [v["title"] for v in spec["hconcat"]] == ["Weights", "Predictions"]
    assert spec["hconcat"][1]["encoding"]["y"]["axis"]["values"][-1] == 359  # the test set's size on the axis
