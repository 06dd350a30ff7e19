"""The cost chapter's chart builders (charts, section "cost of determinism"): what each draws, from what."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nnrandomness import charts


def _timed(configurations=("det_full", "det_no_fill", "bf16"), models=("smallcnn", "mediumcnn_k3")) -> pd.DataFrame:
    rows = []
    for i, model in enumerate(models):
        for j, configuration in enumerate(configurations):
            median = 10.0 + i + j
            rows.append(
                {
                    "model": model,
                    "configuration": configuration,
                    "overhead_pct": 5.0 * j,
                    "overhead_lo": 5.0 * j - 1,
                    "overhead_hi": 5.0 * j + 1,
                    "median_ms": median,
                    "q1_ms": median - 0.5,
                    "q3_ms": median + 0.5,
                    "n_steps": 15,
                    "baseline_ms": 10.0 + i,
                    "k": 3,
                    "extra": "not plotted",
                }
            )
    return pd.DataFrame(rows)


def _layers(spec: dict) -> list[dict]:
    return spec["layer"]


def _data(spec: dict, layer: dict) -> list[dict]:
    return spec["datasets"][layer["data"]["name"]]


def test_cost_configurations_keep_the_book_order_and_colours():
    assert charts.cost_configurations(["bf16", "tf32", "det_full", "det_full"]) == ["det_full", "bf16"]
    color = charts.cost_color(["det_full", "bf16"]).to_dict()
    # Colours go to the configurations present, in order (as the committed chapter draws them).
    assert color["scale"] == {"domain": ["det_full", "bf16"], "range": ["#D55E00", "#009E73"]}
    assert color["sort"] == ["det_full", "bf16"]


def test_overhead_chart_draws_dots_bars_and_references_on_a_symlog_axis():
    spec = charts.overhead_chart(_timed(), ["mediumcnn_k3", "smallcnn"], "cpu-1t").to_dict()
    assert spec["title"] == "Step-time overhead per model and configuration (cpu-1t)"
    zero, rules, labels, iqr, points = _layers(spec)
    assert [layer["mark"]["type"] for layer in (zero, rules, labels, iqr, points)] == [
        "rule",
        "rule",
        "text",
        "rule",
        "point",
    ]
    assert points["encoding"]["y"]["sort"] == ["mediumcnn_k3", "smallcnn"]
    assert points["encoding"]["x"]["scale"] == {"type": "symlog", "constant": 10, "domain": [-100, 1000]}
    assert (iqr["encoding"]["x"]["field"], iqr["encoding"]["x2"]["field"]) == ("overhead_lo", "overhead_hi")
    assert points["encoding"]["color"]["scale"]["domain"] == ["det_full", "det_no_fill", "bf16"]
    plotted = _data(spec, points)
    assert len(plotted) == 6 and "extra" not in plotted[0]  # only the columns the chart shows travel
    references = {row["label"]: row["overhead_pct"] for row in _data(spec, rules)}
    assert references == charts.COST_REFERENCES and references["paper max, P100: 746 %"] == 746
    tooltips = [t["field"] for t in points["encoding"]["tooltip"]]
    assert tooltips == [
        "model",
        "configuration",
        "overhead_pct",
        "median_ms",
        "q1_ms",
        "q3_ms",
        "baseline_ms",
        "n_steps",
    ]


def test_overhead_chart_refuses_a_per_step_frame():
    big = pd.concat([_timed()] * (charts.MAX_ROWS // 6 + 1), ignore_index=True)
    with pytest.raises(ValueError, match="aggregate first"):
        charts.overhead_chart(big, ["smallcnn"], "cpu-1t")


def test_kernel_size_chart_colours_follow_the_whole_sweep():
    medium = _timed(configurations=("det_no_fill",), models=("mediumcnn_k3",))
    spec = charts.kernel_size_chart(medium, ["det_full", "det_no_fill", "baseline"], "cpu-1t").to_dict()
    assert spec["title"] == "MediumCNN(k): overhead against kernel size (cpu-1t)"
    _, line, bars = _layers(spec)
    assert line["mark"] == {"type": "line", "point": True} and bars["mark"]["type"] == "rule"
    assert line["encoding"]["x"]["field"] == "k" and line["encoding"]["x"]["type"] == "ordinal"
    # det_no_fill keeps its colour from the overhead chart (second of det_full, det_no_fill).
    assert line["encoding"]["color"]["scale"] == {
        "domain": ["det_full", "det_no_fill"],
        "range": ["#D55E00", "#009E73"],
    }
    assert (bars["encoding"]["y"]["field"], bars["encoding"]["y2"]["field"]) == ("overhead_lo", "overhead_hi")


def test_kernel_size_chart_says_when_the_sweep_has_no_mediumcnn():
    spec = charts.kernel_size_chart(_timed().iloc[:0], ["det_full"], "cuda-h100").to_dict()
    assert spec["mark"]["type"] == "text"
    assert spec["datasets"][spec["data"]["name"]] == [{"line": "no MediumCNN models in the cuda-h100 sweep"}]


def test_divergence_chart_one_line_per_factor_and_no_zero_on_the_log_axis():
    def history(l2):
        return pd.DataFrame(
            {
                "epoch": np.arange(3),
                "step": np.arange(3) * 10,
                "weight_l2": l2,
                "n_disagree": [0, 1, 2],
                "disagreement": [0.0, 0.01, 0.02],
                "accuracy_a": [0.9] * 3,
                "accuracy_b": [0.9] * 3,
            }
        )

    histories = {
        "threads": history([0.0, 1e-6, 1e-3]),
        "ulp": history([1e-8, 1e-6, 1e-2]),
        "impl": history([0.0, 0.0, 0.0]),
    }
    spec = charts.divergence_chart(histories, "How far two replicas drift apart").to_dict()
    assert spec["title"] == "How far two replicas drift apart"
    l2, disagree = spec["hconcat"]
    assert l2["encoding"]["y"]["scale"] == {"type": "log"}
    assert [row["factor"] for row in _data(spec, l2)] == ["threads", "threads", "ulp", "ulp", "ulp"]
    assert len(_data(spec, disagree)) == 9  # every epoch of every factor, zeros included
    assert l2["encoding"]["color"]["scale"] == {
        "domain": ["threads", "ulp", "impl"],
        "range": list(charts.DIVERGENCE_COLORS),
    }
