"""Altair charts for the book: an offline renderer and the helpers every analysis chapter shares.

Rendering
---------
One chart pipeline for JupyterLab, the book and static viewers. Altair's own renderers do not
fit: ``html`` loads Vega from a CDN (blank charts offline), ``mimetype`` writes Altair 6.3's v6
key, which is not a valid nbformat MIME type (the book build crashes), and both give every chart
a random ``altair-viz-<uuid>`` id. ``enable()`` switches to a renderer of our own whose output is

* ``application/vnd.vegalite.v5+json`` (:data:`MIME_TYPE`): the Vega-Lite spec, with
  :data:`EMBED_OPTIONS` in the output's metadata. JupyterLab 4 draws it with its built-in Vega
  renderer, offline and interactive (tooltips, selections), even in an untrusted notebook. The
  book draws it through the myst-nb MIME renderer ``book.VegaLiteMime`` (registered under the
  entry-point group ``myst_nb.mime_renderers`` in pyproject.toml), which writes
  :func:`embed_html`: a ``<div id="nnr-chart-<hash of the spec>">`` and a script calling
  ``window.vegaEmbed`` from ``_static/vega-bundle.js`` (written by :func:`write_bundle`: vega,
  vega-lite and vega-embed for the Vega-Lite version Altair emits).
* ``image/svg+xml``: the chart drawn by vl-convert, for viewers without JavaScript (GitHub,
  nbviewer). JupyterLab and the book prefer the interactive view.
* ``text/plain``: one line naming the chart.

Nothing in the output depends on the run (the id is a hash of the spec), so re-running a chapter
on the same data gives byte-identical output. Data is embedded: aggregate first (:func:`tidy_limit`).

Shared helpers
--------------
:func:`tidy_limit` (row cap), :func:`setting_color` / :func:`setting_scale` /
:func:`setting_sort` (one colour per noise setting in every chart, in the order of
``noise.SETTINGS``), :func:`figure_name` and :func:`caption` (figure names and captions, see the
convention below), :func:`glue_figure` and :func:`glue_numbers` (glue for the book, shown in JupyterLab).

Chapter figures
---------------
One builder per figure of the analysis chapters (:func:`accuracy_churn`, :func:`per_class_chart`,
...): a tidy frame in, a chart out, so that a chapter's hidden figure cell only calls a builder
and glues the result.

Convention for figures in the chapters: glue the chart with display (``myst_nb.glue(name,
chart, display=True)``, or :func:`glue_figure`) under ``figure_name(chapter, slug)``
(``fig-<chapter>-<slug>``) in a cell tagged ``remove-output`` (JupyterLab shows the chart in the
cell, the book shows it once, where the directive is) and place it with a ``{glue:figure}``
directive whose caption comes from :func:`caption` (via a glued string) or is written in the
prose; captions say what is shown, then n, hardware and cell.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd

from .noise import SETTINGS

__all__ = [
    "BUNDLE_NAME",
    "COST_COLORS",
    "COST_CONFIGURATIONS",
    "COST_REFERENCES",
    "DIVERGENCE_COLORS",
    "EMBED_OPTIONS",
    "FALLBACK_NOTE",
    "ID_PREFIX",
    "MAX_ROWS",
    "MIME_TYPE",
    "NEUTRAL_DARK",
    "NEUTRAL_LIGHT",
    "RENDERER",
    "REPLICAS_TOOLTIP",
    "SETTING_COLORS",
    "TOOLING_GREY",
    "accuracy_churn",
    "bundle_header",
    "caption",
    "chart_id",
    "churn_epochs_chart",
    "cost_color",
    "cost_configurations",
    "divergence_chart",
    "divergence_growth",
    "embed_html",
    "enable",
    "figure_name",
    "glue_figure",
    "glue_numbers",
    "glue_png",
    "jordan_direct_chart",
    "kernel_size_chart",
    "missing_chart",
    "null_range_chart",
    "overhead_chart",
    "percent_axis",
    "percent_format",
    "per_class_chart",
    "prediction_grid",
    "replica_curves",
    "render",
    "right_counts",
    "setting_color",
    "setting_points",
    "setting_scale",
    "setting_selection",
    "setting_sort",
    "settings_legend",
    "static_svg",
    "subgroup_replicas",
    "subgroup_spread",
    "summary_chart",
    "tidy_limit",
    "tooling_churn_chart",
    "tooling_matrix",
    "train_seconds_chart",
    "training_curves",
    "unstable_examples",
    "unstable_signals",
    "variance_chart",
    "write_bundle",
]

# ----------------------------------------------------------------------------- rendering
RENDERER = "nnrandomness"  # name under which enable() registers the renderer with Altair
BUNDLE_NAME = "vega-bundle.js"  # file in the book's _static/ that defines window.vegaEmbed
ID_PREFIX = "nnr-chart-"
# JupyterLab 4's own Vega renderer registers Vega-Lite v3-v5 (it bundles Vega-Lite 5.6); Altair
# 6's v6 key is not valid nbformat. Altair's v6 spec under the v5 key draws in Lab
# (tests/test_lab.py checks it) and in the book (its own v6 bundle, see book.VegaLiteMime).
MIME_TYPE = "application/vnd.vegalite.v5+json"
# Embed options: SVG (crisp, and testable in the DOM); the actions menu without the editor
# link, which would leave the offline book for vega.github.io.
EMBED_OPTIONS = {
    "mode": "vega-lite",
    "renderer": "svg",
    "actions": {"export": True, "source": True, "compiled": False, "editor": False},
}
# Shown in the book's chart div until vegaEmbed replaces it (so: only where scripts do not run).
FALLBACK_NOTE = "Interactive chart: it needs JavaScript."


def _vl_version() -> str:
    """The Vega-Lite version Altair emits, in vl-convert's spelling (``v6_4``)."""
    from altair.utils.html import vl_version_for_vl_convert

    return vl_version_for_vl_convert()


def bundle_header() -> str:
    """First line of the bundle: what it was made from. A different line means: regenerate."""
    import vl_convert as vlc

    return (
        f"/* vega-embed {vlc.get_vega_embed_version()}, vega {vlc.get_vega_version()}, "
        f"vega-lite {_vl_version()} (vl-convert {vlc.__version__}, altair {alt.__version__}); "
        "written by nnrandomness.charts.write_bundle */"
    )


def write_bundle(static_dir: str | Path, force: bool = False) -> tuple[Path, bool]:
    """Write ``<static_dir>/vega-bundle.js`` unless it already matches the versions in use.

    Returns (path, written). The bundle (about 0.9 MB) is deterministic for given versions, so
    it is committed and only rewritten after an upgrade of Altair or vl-convert.
    """
    path = Path(static_dir) / BUNDLE_NAME
    header = bundle_header()
    if not force and path.exists():
        with open(path, encoding="utf-8") as f:
            if f.readline().rstrip("\n") == header:
                return path, False
    import vl_convert as vlc

    body = vlc.javascript_bundle(vl_version=_vl_version())  # ends by assigning window.vegaEmbed etc.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".js.tmp")
    # The IIFE keeps the bundle's top-level `const`s out of the page's global scope, where they
    # would clash with Sphinx's own globals (`_` among them).
    tmp.write_text(f"{header}\n(function () {{\n{body}\n}})();\n", encoding="utf-8")
    tmp.replace(path)
    return path, True


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def chart_id(spec: dict, embed_options: dict | None = None) -> str:
    """A div id that depends only on the chart: the same chart on the same data, the same id."""
    digest = hashlib.sha256(_canonical([spec, embed_options or {}]).encode()).hexdigest()
    return ID_PREFIX + digest[:16]


def embed_html(spec: dict, options: dict | None = None) -> str:
    """The chart for an HTML page that provides ``window.vegaEmbed`` (the book): a
    ``<div id="nnr-chart-<hash>">`` and a script that draws the chart into it."""
    options = {**EMBED_OPTIONS, **(options or {})}
    div = chart_id(spec, options)
    # "$schema" is only a version tag (mode is given explicitly); leaving it out keeps URLs out
    # of inline scripts, which the book's tests scan for network loads.
    payload = {k: v for k, v in spec.items() if k != "$schema"}
    # "</" inside a JSON string would end the <script> element early.
    spec_js = _canonical(payload).replace("</", "<\\/")
    options_js = _canonical(options)
    return (
        f'<div id="{div}" class="nnr-chart"><p class="nnr-chart-note"><em>{FALLBACK_NOTE}</em></p></div>\n'
        '<script type="text/javascript">\n'
        "(function () {\n"
        f'  var el = document.getElementById("{div}");\n'
        '  if (!el || typeof window.vegaEmbed !== "function") return;  // no bundle here: keep the note\n'
        '  el.textContent = "";\n'
        f"  window.vegaEmbed(el, {spec_js}, {options_js}).catch(function (err) {{\n"
        '    el.textContent = "chart failed to render: " + err;\n'
        "  });\n"
        "})();\n"
        "</script>"
    )


def static_svg(spec: dict) -> str:
    """The chart as an SVG image, drawn by vl-convert (no browser), for viewers without JavaScript."""
    import vl_convert as vlc

    return vlc.vegalite_to_svg(spec, vl_version=_vl_version())


def render(spec: dict, **metadata) -> tuple[dict, dict]:
    """Altair renderer: the mimebundle of one chart and its metadata (see the module docstring)."""
    options = {**EMBED_OPTIONS, **(metadata.get("embed_options") or {})}
    title = spec.get("title")
    if isinstance(title, dict):
        title = title.get("text")
    if isinstance(title, list):  # a multi-line title
        title = " ".join(title)
    data = {
        MIME_TYPE: spec,
        "image/svg+xml": static_svg(spec),
        "text/plain": f"<chart {chart_id(spec, options)}: {title or 'untitled'}>",
    }
    # JupyterLab's renderer reads embed_options from the output's metadata (it sets mode itself).
    return data, {MIME_TYPE: {"embed_options": {k: v for k, v in options.items() if k != "mode"}}}


def enable() -> None:
    """Render Altair charts with the offline renderer (call once, in a chapter's imports cell)."""
    if RENDERER not in alt.renderers.names():
        alt.renderers.register(RENDERER, render)
    alt.renderers.enable(RENDERER)


# ----------------------------------------------------------------------------- data size
MAX_ROWS = 5000  # rows a chart may embed; every row travels inside the page as JSON


def tidy_limit(df: pd.DataFrame, max_rows: int = MAX_ROWS) -> pd.DataFrame:
    """Return ``df`` unchanged if a chart may embed it; raise if it has more than max_rows rows.

    The charts of the book embed their data in the HTML page and the committed notebook, so a
    per-example frame (replicas x examples rows) must be aggregated before it is plotted.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"tidy_limit expects a pandas DataFrame, got {type(df).__name__}")
    if len(df) > max_rows:
        raise ValueError(
            f"a chart would embed {len(df)} rows (limit {max_rows}): aggregate first "
            "(e.g. group by setting and class, or bin per-example values)"
        )
    return df


# ----------------------------------------------------------------------------- axes
def _finite(values) -> np.ndarray:
    arrays = [np.ravel(np.asarray(v, dtype=float)) for v in values]
    numbers = np.concatenate(arrays) if arrays else np.array([], dtype=float)
    return numbers[np.isfinite(numbers)]


def percent_format(*values, ticks: int = 8) -> str:
    """A d3 format ``.N%`` with the decimals that ticks over the values' range need.

    Vega places about one tick per 40 px at nice steps (1, 2 or 5 times a power of ten), so a
    format coarser than the step prints one label twice (``.0%`` on 0.5 % steps: 0%, 1%, 1%, 2%).
    The range runs from 0 (Vega's quantitative scales include zero) to the values' extremes;
    ``ticks`` is the number of steps assumed over it. No values (or none finite) give ``.1%``.
    """
    numbers = _finite(values)
    if not numbers.size:
        return ".1%"
    span = (max(float(numbers.max()), 0.0) - min(float(numbers.min()), 0.0)) * 100  # in percent
    if span == 0:
        return ".0%"
    return f".{min(3, max(0, math.ceil(-math.log10(span / ticks))))}%"


def percent_axis(*values, fmt: str | None = None, ticks: int = 8, zero: bool = True, **kwargs) -> alt.Axis:
    """An axis of shares printed as percentages whose tick labels never repeat.

    The format is :func:`percent_format` over ``values`` (or ``fmt``). The ticks are given
    explicitly: multiples of the nice step (1, 2 or 5 times a power of ten) that divides the
    values' range (from 0 unless ``zero`` is False) into at most ``ticks`` steps, and never less
    than one unit of the format's last decimal, so no two ticks print alike. (Vega's own
    ``tickMinStep`` does not ensure that: it caps the tick count, and d3 may still pick a finer
    step.) Ticks outside the scale's domain are not drawn.
    """
    fmt = fmt or percent_format(*values, ticks=ticks)
    match = re.fullmatch(r"\.(\d)%", fmt)
    if not match:
        raise ValueError(f"percent_axis needs a format such as '.1%' (0 to 9 decimals), got {fmt!r}")
    digits = int(match[1]) + 2  # decimals of the share itself
    numbers = _finite(values)
    lo, hi = (float(numbers.min()), float(numbers.max())) if numbers.size else (0.0, 1.0)
    if zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    unit = 10.0**-digits
    step = next(
        m * 10.0**k
        for k in range(-digits, 10)
        for m in (1, 2, 5)
        if m * 10.0**k >= max(unit, (hi - lo) / ticks) * (1 - 1e-9)
    )
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    values = [round(i * step, digits + 1) for i in range(first, max(last, first + 1) + 1)]
    return alt.Axis(format=fmt, values=values, **kwargs)


# ----------------------------------------------------------------------------- settings
# The order of the settings in every legend, axis and table is noise.SETTINGS' order: the
# paper's four, then the single-source decomposition of ALGO, then the smallest perturbation.
# Okabe-Ito colours (distinguishable with the common colour-vision deficiencies) plus grey for
# CONTROL, whose replicas should not differ at all.
SETTING_COLORS = {
    "ALGO+IMPL": "#D55E00",  # vermillion: everything varies
    "ALGO": "#0072B2",  # blue: algorithmic sources only
    "IMPL": "#E69F00",  # orange: tooling only
    "CONTROL": "#999999",  # grey: nothing varies
    "INIT": "#56B4E9",  # sky blue (the ALGO sources are blue-green-purple-yellow)
    "ORDER": "#009E73",  # bluish green
    "AUG": "#CC79A7",  # reddish purple
    "DROPOUT": "#F0E442",  # yellow
    "ULP": "#000000",  # black: one weight moved by one ULP
    "ALGO+IMPL-PAPER": "#8F3E00",  # dark vermilion: the paper's ALGO+IMPL (augmentation seeds fixed)
    "ALGO-PAPER": "#004D80",  # dark blue: the paper's ALGO
}


def setting_sort(settings: Iterable[str] | None = None) -> list[str]:
    """The given settings (default: all) in the book's order (noise.SETTINGS'); an unknown name is an error."""
    if settings is None:
        return list(SETTINGS)
    given = list(dict.fromkeys(settings))
    unknown = [s for s in given if s not in SETTINGS]
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; known settings: {', '.join(SETTINGS)}")
    return [s for s in SETTINGS if s in given]


def setting_scale(settings: Iterable[str] | None = None) -> alt.Scale:
    """Colour scale of the settings; pass the settings present to keep the legend short."""
    domain = setting_sort(settings)
    return alt.Scale(domain=domain, range=[SETTING_COLORS[s] for s in domain])


# The replicas behind a point or bar, in every tooltip that shows a per-cell statistic.
REPLICAS_TOOLTIP = alt.Tooltip("n_replicas:Q", title="replicas")


def setting_color(
    field: str = "setting", settings: Iterable[str] | None = None, title: str = "setting", **kwargs
) -> alt.Color:
    """``color=`` encoding for a column of setting names, the same colours in every chart."""
    return alt.Color(f"{field}:N", scale=setting_scale(settings), sort=setting_sort(settings), title=title, **kwargs)


def settings_legend(settings: Iterable[str] | None = None) -> alt.Chart:
    """A strip of the settings in their colours, for the chapters that introduce them."""
    order = setting_sort(settings)
    frame = pd.DataFrame({"setting": order})
    return (
        alt.Chart(frame, title="The settings, in the colours every chart gives them")
        .mark_square(size=300, opacity=1)
        .encode(
            x=alt.X("setting:N", sort=order, title=None, axis=alt.Axis(labelAngle=0)),
            color=setting_color(settings=order, legend=None),
            tooltip=["setting:N"],
        )
        .properties(width=60 * len(order), height=40)
    )


# ----------------------------------------------------------------------------- figures
_SLUG = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def figure_name(chapter: str, slug: str) -> str:
    """``fig-<chapter>-<slug>``: the glue key and the ``:name:`` of a figure (unique in the book).

    ``chapter`` is the notebook's stem without its number (``topline`` for 20_topline).
    """
    for part, value in (("chapter", chapter), ("slug", slug)):
        if not _SLUG.match(value):
            raise ValueError(f"{part} {value!r} must be lowercase words joined by '-' (e.g. 'accuracy-spread')")
    return f"fig-{chapter}-{slug}"


def caption(text: str, *, n: int, hardware: str, cell: str) -> str:
    """A figure caption that says what is shown, then on what: ``n`` replicas per setting,
    the hardware label and the cell (dataset/model) of the run store."""
    text = text.strip()
    if not text:
        raise ValueError("caption text is empty")
    if not text.endswith("."):
        text += "."
    return f"{text} n = {n} replicas per setting; {hardware}; {cell}."


# ---- analysis charts
# Pieces shared by the analysis chapters' figures (20_topline ... 24_hardware, 11_runs).


def missing_chart(message: str, title: str = "No data") -> alt.Chart:
    """A chart that only says what is missing: glued in place of a figure whose runs are absent,
    so that the chapter's ``{glue:figure}`` still resolves and the reader sees why it is empty."""
    frame = pd.DataFrame({"line": [message]})
    return (
        alt.Chart(frame, title=title)
        .mark_text(align="left", baseline="middle", fontSize=13, color="#666666")
        .encode(text="line:N")
        .properties(width=420, height=40)
    )


def setting_selection(name: str = "pick_setting") -> alt.Parameter:
    """Click a setting in the legend to select it (shift-click for several); charts that share
    this parameter filter or fade the other settings. The explicit name keeps specs (and so the
    chart ids) independent of how many charts the kernel built before."""
    return alt.selection_point(fields=["setting"], bind="legend", name=name)


def setting_points(
    frame: pd.DataFrame,
    value: str,
    *,
    lo: str | None = None,
    hi: str | None = None,
    axis_title: str,
    fmt: str = ".2%",
    title: str | None = None,
    tooltip: Iterable[alt.Tooltip] = (),
    settings: Iterable[str] | None = None,
) -> alt.LayerChart:
    """One dot per setting (rows in the book's order, colours as everywhere) at ``value``, with a
    horizontal bar from ``lo`` to ``hi`` (a confidence interval) when given.

    ``frame`` has a ``setting`` column, ``value`` and optionally ``lo``/``hi``; extra tooltip
    fields come from ``tooltip``. The frame sits on the layer chart, not on its layers, so the
    result can be faceted: ``setting_points(...).facet(column="model:N")``.
    """
    tidy_limit(frame)
    present = setting_sort(settings if settings is not None else frame["setting"].unique())
    y = alt.Y("setting:N", sort=present, title=None)
    tips = [alt.Tooltip("setting:N"), alt.Tooltip(f"{value}:Q", title=axis_title, format=fmt)]
    if lo and hi:
        tips += [
            alt.Tooltip(f"{lo}:Q", title="95% CI low", format=fmt),
            alt.Tooltip(f"{hi}:Q", title="95% CI high", format=fmt),
        ]
    tips += list(tooltip)
    color = setting_color(settings=present, legend=None)
    # A share's axis: decimals from the data, never a repeated label; any other number: fmt.
    shown = [frame[c] for c in (value, lo, hi) if c]
    axis = percent_axis(*shown) if fmt.endswith("%") else alt.Axis(format=fmt)
    point = (
        alt.Chart()
        .mark_point(filled=True, size=70)
        .encode(x=alt.X(f"{value}:Q", title=axis_title, axis=axis), y=y, color=color, tooltip=tips)
    )
    layers = [point]
    if lo and hi:
        layers.insert(
            0,
            alt.Chart()
            .mark_rule(strokeWidth=2)
            .encode(x=alt.X(f"{lo}:Q"), x2=alt.X2(f"{hi}:Q"), y=y, color=color, tooltip=tips),
        )
    chart = alt.layer(*layers, data=frame)
    return chart.properties(title=title) if title else chart


# ---- chapter figures
# One builder per figure of the chapters (01_noise_sources ... 24_hardware): the
# chapter's hidden cell calls it and glues the chart. Each takes the chapter's tidy frames as
# they come from analysis and returns the chart; none reads files or globals.
_PICK_FADE = (1.0, 0.1)  # opacity of the settings picked in the legend, and of the others


def _pick_opacity(pick: alt.Parameter, on: float = _PICK_FADE[0], off: float = _PICK_FADE[1]):
    """Full opacity for the settings picked in the legend, faint for the others."""
    return alt.when(pick).then(alt.value(on)).otherwise(alt.value(off))


def prediction_grid(grid: pd.DataFrame) -> alt.LayerChart:
    """02_metrics: a small example of replicas' predictions, one cell per (replica, example) with
    the predicted class written in it, coloured by whether it is right. ``grid`` has columns
    replica, example, prediction, label and correct (one row per cell, in display order)."""
    cells = alt.Chart(tidy_limit(grid)).encode(
        x=alt.X("example:N", title=None, axis=alt.Axis(labelAngle=0, orient="top")),
        y=alt.Y("replica:N", title=None),
    )
    return (
        cells.mark_rect(stroke="white", strokeWidth=2).encode(
            color=alt.Color(
                "correct:N",
                scale=alt.Scale(domain=[True, False], range=["#56B4E9", "#E69F00"]),
                legend=alt.Legend(title="correct", orient="bottom"),
            ),
            tooltip=["replica:N", "example:N", "prediction:N", "label:N", "correct:N"],
        )
        + cells.mark_text(fontSize=13).encode(text="prediction:N")
    ).properties(width=420, height=120)


def divergence_growth(growth: pd.DataFrame, colours: dict[str, str], epochs, n_test: int) -> alt.HConcatChart:
    """01_noise_sources: how far a replica that differs from the reference in one way (one ULP,
    two threads, fresh seeds) ends up, against training length: the L2 distance of the weights
    (left) and the test predictions that differ (right). ``growth`` has comparison, epochs,
    'L2 distance', 'differing predictions' and 'reference accuracy'; ``colours`` maps each
    comparison, in legend order, to the setting whose colour it takes; ``epochs`` are the axis ticks."""
    comparison_order = list(colours)
    base = alt.Chart(tidy_limit(growth)).encode(
        x=alt.X(
            "epochs:Q", scale=alt.Scale(type="log", base=2), axis=alt.Axis(values=list(epochs)), title="epochs trained"
        ),
        color=alt.Color(
            "comparison:N",
            sort=comparison_order,
            title=None,
            scale=alt.Scale(domain=comparison_order, range=[SETTING_COLORS[s] for s in colours.values()]),
            legend=alt.Legend(orient="bottom"),
        ),
        tooltip=[
            "comparison:N",
            "epochs:Q",
            alt.Tooltip("L2 distance:Q", format=".2e"),
            "differing predictions:Q",
            alt.Tooltip("reference accuracy:Q", format=".1%"),
        ],
    )
    distance = (
        base.mark_line(point=True)
        .encode(
            y=alt.Y(
                "L2 distance:Q",
                scale=alt.Scale(type="log"),
                axis=alt.Axis(format=".0e"),
                title="L2 distance to the reference's weights",
            ),
        )
        .properties(width=300, height=240, title="Weights")
    )
    flips = (
        base.mark_line(point=True)
        .encode(  # symlog: 0, a few and hundreds on one axis
            y=alt.Y(
                "differing predictions:Q",
                scale=alt.Scale(type="symlog"),
                axis=alt.Axis(values=[0, 1, 2, 5, 10, 20, 50, 100, 200, n_test]),
                title=f"test predictions that differ (of {n_test})",
            ),
        )
        .properties(width=300, height=240, title="Predictions")
    )
    return alt.hconcat(distance, flips)


def training_curves(curves: pd.DataFrame) -> alt.FacetChart:
    """11_runs: mean test accuracy over a cell's replicas after every epoch, one line per setting,
    one panel per hardware, dataset and model (``curves``: analysis.training_curves rows)."""
    curves = curves.assign(panel=curves["hardware"] + " " + curves["dataset"] + "/" + curves["model"])
    present = setting_sort(curves["setting"])
    pick = setting_selection("pick_setting")
    return (
        alt.Chart(tidy_limit(curves))
        .mark_line()
        .encode(
            x=alt.X("epoch:Q", title="epoch"),
            y=alt.Y(
                "test_accuracy:Q",
                title="test accuracy (mean over replicas)",
                axis=percent_axis(curves["test_accuracy"]),
            ),
            color=setting_color(settings=present),
            opacity=_pick_opacity(pick),
            tooltip=[
                "panel:N",
                "setting:N",
                "epoch:Q",
                alt.Tooltip("test_accuracy:Q", format=".2%"),
                alt.Tooltip("replicas:Q"),
            ],
        )
        .add_params(pick)
        .properties(width=260, height=160)
        .facet(facet=alt.Facet("panel:N", title=None), columns=2)
        .properties(title="Test accuracy during training")
    )


def replica_curves(history: pd.DataFrame, settings: Iterable[str]) -> alt.VConcatChart:
    """10_training: test accuracy (top row) and training loss (bottom row) after every epoch, one
    line per replica, one panel per setting (in the order given). Replicas are no settings: one
    neutral colour, told apart by the tooltip; under CONTROL their lines coincide. ``history``
    holds the store's per-epoch rows (setting, replica, epoch, test_accuracy, train_loss)."""
    order = list(dict.fromkeys(settings))
    shown = tidy_limit(
        history.loc[history["setting"].isin(order), ["setting", "replica", "epoch", "test_accuracy", "train_loss"]]
    )
    tips = [
        "setting:N",
        "replica:O",
        "epoch:Q",
        alt.Tooltip("test_accuracy:Q", title="test accuracy", format=".2%"),
        alt.Tooltip("train_loss:Q", title="training loss", format=".4f"),
    ]
    base = alt.Chart(shown).encode(
        x=alt.X("epoch:Q", title="epoch", axis=alt.Axis(tickMinStep=1, format="d")),
        detail="replica:N",
        tooltip=tips,
    )
    point = alt.OverlayMarkDef(color=NEUTRAL_DARK, filled=True, size=25)  # a point's own default is blue
    line = {"point": point, "color": NEUTRAL_DARK, "opacity": 0.6, "strokeWidth": 1.5}
    accuracy = base.mark_line(**line).encode(
        y=alt.Y(
            "test_accuracy:Q",
            title="test accuracy",
            scale=alt.Scale(zero=False),
            axis=percent_axis(shown["test_accuracy"], zero=False),
        )
    )
    loss = base.mark_line(**line).encode(y=alt.Y("train_loss:Q", title="training loss", scale=alt.Scale(zero=False)))
    column = alt.Facet("setting:N", sort=order, title=None)
    size = {"width": 200, "height": 130}
    return alt.vconcat(
        accuracy.properties(**size).facet(column=column),
        loss.properties(**size).facet(column=column),
    ).properties(title="Learning curves of every replica")


def accuracy_churn(main: pd.DataFrame) -> alt.HConcatChart:
    """20_topline: the spread of top-1 accuracy per setting with its interval (left) beside
    predictive churn split into its two parts with the interval of the total (right).
    ``main`` holds analysis.topline rows of one (hardware, dataset, model)."""
    acc = setting_points(
        main,
        "acc_std",
        lo="acc_std_lo",
        hi="acc_std_hi",
        axis_title="std of top-1 accuracy",
        title="Spread of top-1 accuracy",
        tooltip=[
            alt.Tooltip("acc_mean:Q", title="mean accuracy", format=".2%"),
            REPLICAS_TOOLTIP,
        ],
    )
    parts = main.melt(
        id_vars=["setting", "n_replicas", "churn"],
        value_vars=["one_correct", "both_wrong"],
        var_name="part",
        value_name="share",
    )
    parts["part"] = parts["part"].map({"one_correct": "one right, one wrong", "both_wrong": "both wrong, differently"})
    order = setting_sort(main["setting"])
    bars = (
        alt.Chart(tidy_limit(parts))
        .mark_bar()
        .encode(
            x=alt.X(
                "share:Q",
                stack="zero",
                title="churn (share of test examples)",
                axis=percent_axis(main["churn"], main["churn_hi"]),
            ),
            y=alt.Y("setting:N", sort=order, title=None),
            color=setting_color(settings=order, legend=None),
            opacity=alt.Opacity(
                "part:N",
                sort=["one right, one wrong", "both wrong, differently"],
                scale=alt.Scale(range=[1.0, 0.45]),
                # No legend: its swatches would be black and grey, not the settings' colours; the
                # caption says which shade is which, and the tooltip names the part.
                legend=None,
            ),
            tooltip=[
                "setting:N",
                "part:N",
                alt.Tooltip("share:Q", format=".2%"),
                alt.Tooltip("churn:Q", title="churn (total)", format=".2%"),
                REPLICAS_TOOLTIP,
            ],
        )
    )
    ci = (
        alt.Chart(main)
        .mark_rule(color="black")
        .encode(
            x="churn_lo:Q",
            x2="churn_hi:Q",
            y=alt.Y("setting:N", sort=order),
            tooltip=[
                "setting:N",
                alt.Tooltip("churn:Q", format=".2%"),
                alt.Tooltip("churn_lo:Q", title="95% CI low", format=".2%"),
                alt.Tooltip("churn_hi:Q", title="95% CI high", format=".2%"),
            ],
        )
    )
    churn = (bars + ci).properties(title="Predictive churn and its two parts")
    return alt.hconcat(acc.properties(width=210), churn.properties(width=230)).properties(
        title="Accuracy spread and churn"
    )


def churn_epochs_chart(epochs: pd.DataFrame, same_setting: str = "ULP") -> alt.HConcatChart:
    """20_topline: churn after each stored epoch per setting, with its interval (left), and the
    share of ``same_setting``'s replicas whose predictions equal CONTROL's at that epoch with its
    interval (right). ``epochs`` holds analysis.churn_by_epoch rows of one (hardware, dataset, model)."""
    tidy_limit(epochs)
    present = setting_sort(epochs["setting"])
    ticks = sorted(int(e) for e in epochs["epoch"].unique())
    x = alt.X(
        "epoch:Q",
        title="epochs trained",
        scale=alt.Scale(domain=[0, max(ticks)]),
        axis=alt.Axis(values=ticks, format="d"),
    )
    color = setting_color(settings=present)
    tips = [
        "setting:N",
        alt.Tooltip("epoch:Q", title="epoch"),
        alt.Tooltip("churn:Q", title="churn", format=".2%"),
        alt.Tooltip("churn_lo:Q", title="95% CI low", format=".2%"),
        alt.Tooltip("churn_hi:Q", title="95% CI high", format=".2%"),
        REPLICAS_TOOLTIP,
    ]
    base = alt.Chart(epochs).encode(x=x, color=color, tooltip=tips)
    churn = alt.layer(
        base.mark_line(strokeWidth=1.5).encode(
            y=alt.Y("churn:Q", title="churn", axis=percent_axis(epochs["churn"], epochs["churn_hi"]))
        ),
        base.mark_point(filled=True, size=40).encode(y="churn:Q"),
        base.mark_rule().encode(y="churn_lo:Q", y2="churn_hi:Q"),
    ).properties(width=220, height=220, title="Churn after each epoch")
    same = epochs[epochs["setting"] == same_setting].dropna(subset=["same_share"])
    shares = alt.Chart(same).encode(
        x=x,
        color=setting_color(settings=[same_setting], legend=None),
        tooltip=[
            alt.Tooltip("epoch:Q", title="epoch"),
            alt.Tooltip("n_same:Q", title="replicas with CONTROL's predictions"),
            REPLICAS_TOOLTIP,
            alt.Tooltip("same_share:Q", title="share", format=".0%"),
            alt.Tooltip("same_lo:Q", title="95% CI low", format=".0%"),
            alt.Tooltip("same_hi:Q", title="95% CI high", format=".0%"),
        ],
    )
    back = alt.layer(
        shares.mark_line(strokeWidth=1.5).encode(
            y=alt.Y(
                "same_share:Q",
                title=f"share of {same_setting} replicas",
                scale=alt.Scale(domain=[0, 1]),
                axis=percent_axis(fmt=".0%"),
            )
        ),
        shares.mark_point(filled=True, size=40).encode(y="same_share:Q"),
        shares.mark_rule().encode(y="same_lo:Q", y2="same_hi:Q"),
    ).properties(width=140, height=220, title=f"{same_setting} replicas with CONTROL's predictions")
    # Independent colour scales: the left panel's legend lists every setting, the right has none.
    return alt.hconcat(churn, back).resolve_scale(color="independent").properties(title="Churn against training length")


def summary_chart(main: pd.DataFrame) -> alt.HConcatChart:
    """25_claims (for the introduction): the SD of top-1 accuracy (chi-square interval) and churn
    (BCa interval) per setting of one (hardware, dataset, model), side by side.
    ``main`` holds analysis.topline rows."""
    tips = [alt.Tooltip("acc_mean:Q", title="mean accuracy", format=".2%"), REPLICAS_TOOLTIP]
    sd = setting_points(
        main,
        "acc_std",
        lo="acc_std_lo",
        hi="acc_std_hi",
        axis_title="std of top-1 accuracy",
        title="Spread of accuracy",
        tooltip=tips,
    )
    churn = setting_points(
        main,
        "churn",
        lo="churn_lo",
        hi="churn_hi",
        axis_title="churn (share of test examples)",
        fmt=".1%",
        title="Predictive churn",
        tooltip=tips,
    )
    return alt.hconcat(sd.properties(width=220), churn.properties(width=220)).properties(
        title="Accuracy spread and churn per setting"
    )


def glue_png(chapter: str, slug: str, chart, scale: float = 1.5) -> None:
    """Glue a PNG of ``chart`` under ``figure_name(chapter, slug) + '-png'`` (display=False), for
    a page that is not a notebook (the introduction): myst-nb pastes another document's glued
    output with the ``{glue}`` directive and its ``:doc:`` option, and only as an image, text or
    HTML (neither ``{glue:figure}`` nor the Vega-Lite bundle crosses documents)."""
    import vl_convert as vlc
    from IPython.display import Image
    from myst_nb import glue  # the book's dependency, not the package's: imported on use

    png = vlc.vegalite_to_png(chart.to_dict(), vl_version=_vl_version(), scale=scale)
    glue(f"{figure_name(chapter, slug)}-png", Image(data=png), display=False)


def per_class_chart(classes: pd.DataFrame, spread: pd.DataFrame) -> alt.HConcatChart:
    """21_per_class: the std across replicas of each class's accuracy (ticks) and of top-1
    accuracy (diamond) per setting, beside the per-class stds of the settings picked in the
    legend. ``classes`` and ``spread`` are analysis.per_class and per_class_spread rows."""
    present = setting_sort(spread["setting"])
    pick = setting_selection("pick_setting")
    y = alt.Y("setting:N", sort=present, title=None)
    faded = _pick_opacity(pick, 1.0, 0.15)
    tips = [
        "setting:N",
        alt.Tooltip("class:O", title="class"),
        alt.Tooltip("n_examples:Q", title="test examples"),
        alt.Tooltip("mean:Q", title="mean accuracy", format=".2%"),
        alt.Tooltip("std:Q", title="std across replicas", format=".2%"),
        REPLICAS_TOOLTIP,
    ]
    ticks = (
        alt.Chart(tidy_limit(classes))
        .mark_tick(thickness=2, size=14)
        .encode(
            x=alt.X("std:Q", title="standard deviation across replicas", axis=percent_axis(classes["std"])),
            y=y,
            color=setting_color(settings=present),
            opacity=faded,
            tooltip=tips,
        )
        .add_params(pick)
    )
    top1 = (
        alt.Chart(spread)
        .mark_point(shape="diamond", size=120, filled=True, color="black")
        .encode(
            x="acc_std:Q",
            y=y,
            opacity=faded,
            tooltip=[
                "setting:N",
                alt.Tooltip("acc_std:Q", title="std of top-1 accuracy", format=".2%"),
                REPLICAS_TOOLTIP,
            ],
        )
    )
    left = (ticks + top1).properties(width=280, title="Top-1 (diamond) and each class (ticks)")
    right = (
        alt.Chart(classes)
        .mark_line(point=True)
        .encode(
            x=alt.X("class:O", title="class", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("std:Q", title="std of the class's accuracy", axis=percent_axis(classes["std"])),
            color=setting_color(settings=present, legend=None),
            tooltip=tips,
        )
        .transform_filter(pick)
        .properties(width=320, title="Per class, for the settings picked in the legend")
    )
    # The legend (and its click selection) belongs to the left view; the right one only filters.
    return (
        alt.hconcat(left, right)
        .resolve_legend(color="independent")
        .properties(title="Spread of per-class accuracy against the top line")
    )


def _subgroup_names(frame: pd.DataFrame, attribute: str) -> pd.DataFrame:
    """``frame`` with ``subgroup`` ('<label> / <attribute>=<value>') and ``kind`` (rare, common)."""
    return frame.assign(
        subgroup=frame["class"].astype(str) + " / " + attribute + "=" + frame["group"].astype(str),
        kind=frame["rare"].map({True: "rare", False: "common"}),
    )


def subgroup_spread(subs: pd.DataFrame, attribute: str) -> alt.HConcatChart:
    """22_subgroups: the std across replicas of each (label, attribute) subgroup's FNR (left) and
    FPR (right) against the subgroup's size; rare subgroups are triangles. ``subs`` is
    analysis.subgroups' output, ``attribute`` the group attribute's name."""
    present = setting_sort(subs["setting"])
    pick = setting_selection("pick_setting")
    shown = _subgroup_names(subs, attribute)
    tips = [
        "setting:N",
        "subgroup:N",
        "kind:N",
        alt.Tooltip("n_subgroup:Q", title="test examples"),
        alt.Tooltip("fnr_mean:Q", title="FNR mean", format=".1%"),
        alt.Tooltip("fnr_std:Q", title="FNR std", format=".1%"),
        alt.Tooltip("fpr_mean:Q", title="FPR mean", format=".2%"),
        alt.Tooltip("fpr_std:Q", title="FPR std", format=".2%"),
        REPLICAS_TOOLTIP,
    ]
    shape = alt.Shape(
        "kind:N", sort=["rare", "common"], scale=alt.Scale(range=["triangle-up", "circle"]), title="subgroup"
    )
    base = alt.Chart(tidy_limit(shown)).encode(opacity=_pick_opacity(pick, 0.9, 0.08), tooltip=tips)
    x = alt.X("n_subgroup:Q", title="test examples in the subgroup", scale=alt.Scale(type="log"))
    # The legends (and the click selection) belong to the left view; the right one follows it.
    fnr = (
        base.mark_point(filled=True, size=60)
        .add_params(pick)
        .encode(
            color=setting_color(settings=present),
            shape=shape,
            x=x,
            y=alt.Y("fnr_std:Q", title="std of FNR across replicas", axis=percent_axis(subs["fnr_std"])),
        )
        .properties(width=300, title="False negative rate")
    )
    fpr = (
        base.mark_point(filled=True, size=60)
        .encode(
            color=setting_color(settings=present, legend=None),
            shape=shape.legend(None),
            x=x,
            y=alt.Y("fpr_std:Q", title="std of FPR across replicas", axis=percent_axis(subs["fpr_std"])),
        )
        .properties(width=300, title="False positive rate")
    )
    return (
        alt.hconcat(fnr, fpr)
        .resolve_legend(color="independent", shape="independent")
        .properties(title="Spread of subgroup error rates against subgroup size")
    )


def subgroup_replicas(rates: pd.DataFrame, attribute: str, setting: str) -> alt.Chart:
    """22_subgroups: the FNR of every (label, attribute) subgroup in each replica of ``setting``,
    rare subgroups in orange. ``rates`` holds analysis.subgroup_rates rows of that setting with
    the ``rare`` flag of analysis.subgroups."""
    one = _subgroup_names(rates, attribute)
    order = one.sort_values(["class", "group"])["subgroup"].unique().tolist()
    return (
        alt.Chart(tidy_limit(one[["subgroup", "kind", "replica", "fnr", "n_subgroup", "fn", "tp"]]))
        .mark_tick(thickness=2, size=12)
        .encode(
            x=alt.X("fnr:Q", title="false negative rate", axis=percent_axis(one["fnr"])),
            y=alt.Y("subgroup:N", sort=order, title="label / attribute"),
            color=alt.Color(
                "kind:N", sort=["rare", "common"], scale=alt.Scale(range=["#D55E00", "#999999"]), title="subgroup"
            ),
            tooltip=[
                "subgroup:N",
                "replica:Q",
                alt.Tooltip("fnr:Q", format=".1%"),
                alt.Tooltip("fn:Q", title="missed"),
                alt.Tooltip("n_subgroup:Q", title="test examples"),
            ],
        )
        .properties(width=380, title=f"False negative rate of each subgroup in each {setting} replica")
    )


def right_counts(examples: pd.DataFrame, summary: pd.DataFrame) -> alt.Chart:
    """23_per_example: how many test examples k replicas of a setting get right, for every k
    (zeros included; symmetric log scale). ``examples`` and ``summary`` are analysis.per_example
    and instability_summary rows."""
    present = setting_sort(examples["setting"])
    right = (examples["frac_correct"] * examples["n_replicas"]).round().astype(int).rename("right")
    grid = pd.crosstab(examples["setting"], right).reindex(  # every (setting, count) pair, zeros included
        columns=range(int(examples["n_replicas"].max()) + 1), fill_value=0
    )
    counts = grid.stack().reset_index(name="examples").merge(summary[["setting", "n_replicas"]], on="setting")
    counts = counts[counts["right"] <= counts["n_replicas"]]
    pick = setting_selection("pick_setting")
    return (
        alt.Chart(tidy_limit(counts))
        .mark_line(point=True)
        .encode(
            x=alt.X("right:O", title="replicas that get the example right", axis=alt.Axis(labelAngle=0)),
            # symlog's own ticks skip 1-50, where most counts are: 0, then 1-2-5 steps to the largest count.
            y=alt.Y(
                "examples:Q",
                title="test examples",
                scale=alt.Scale(type="symlog"),
                axis=alt.Axis(values=_one_two_five(int(counts["examples"].max()) if len(counts) else 1), format="d"),
            ),
            color=setting_color(settings=present),
            opacity=_pick_opacity(pick),
            tooltip=[
                "setting:N",
                alt.Tooltip("right:O", title="replicas right"),
                alt.Tooltip("examples:Q"),
                REPLICAS_TOOLTIP,
            ],
        )
        .add_params(pick)
        .properties(width=420, title="How many replicas get each test example right")
    )


def _one_two_five(top: int) -> list[int]:
    """0, then 1, 2, 5, 10, 20, 50, ... up to the first value at or above ``top``: ticks for a
    symmetric log axis of counts (Vega's own put none between 0 and the tens)."""
    values, k = [0], 0
    while values[-1] < top:
        values.append((1, 2, 5)[k % 3] * 10 ** (k // 3))
        k += 1
    return values


def unstable_examples(chosen: pd.DataFrame, images: np.ndarray, votes: pd.DataFrame, setting: str) -> alt.VConcatChart:
    """23_per_example: the ``chosen`` test examples (analysis.unstable_examples rows) drawn from
    ``images`` (N, C, H, W; 0-255, channels averaged) with their true label, above how many
    replicas of ``setting`` predict each class (``votes``: analysis.examples_votes rows)."""
    order = [f"#{e} (label {y})" for e, y in zip(chosen["example"], chosen["label"])]
    title = dict(zip(chosen["example"], order))
    pixels = pd.DataFrame(
        [
            {"example": title[e], "row": r, "col": c, "value": int(images[e, :, r, c].mean())}
            for e in chosen["example"]
            for r in range(images.shape[2])
            for c in range(images.shape[3])
        ]
    )
    picture = (
        alt.Chart(tidy_limit(pixels))
        .mark_rect()
        .encode(
            x=alt.X("col:O", axis=None),
            y=alt.Y("row:O", axis=None),
            color=alt.Color("value:Q", scale=alt.Scale(scheme="greys", domain=[0, 255]), legend=None),
            tooltip=["example:N", "row:O", "col:O", alt.Tooltip("value:Q", title="pixel")],
        )
        .properties(width=56, height=56)
        .facet(facet=alt.Facet("example:N", sort=order, title=None, header=alt.Header(labelFontSize=10)), columns=6)
    )
    votes = votes.assign(
        example=votes["example"].map(title), outcome=votes["correct"].map({True: "right", False: "wrong"})
    )
    bars = alt.Chart(tidy_limit(votes)).encode(
        y=alt.Y("example:N", sort=order, title=None),
        x=alt.X("votes:Q", stack="zero", title=f"{setting} replicas predicting each class"),
        order=alt.Order("prediction:O"),
        tooltip=["example:N", alt.Tooltip("prediction:O", title="predicted class"), "votes:Q", "outcome:N"],
    )
    bar = bars.mark_bar(stroke="white").encode(
        color=alt.Color(
            "outcome:N", sort=["right", "wrong"], scale=alt.Scale(range=["#0072B2", "#D55E00"]), title="prediction"
        )
    )
    text = bars.mark_text(dx=-7, color="white", fontWeight="bold").encode(
        x=alt.X("votes:Q", stack="zero"), text="prediction:O"
    )
    return alt.vconcat(picture, (bar + text).properties(width=380)).properties(
        title=f"The {len(chosen)} test examples the {setting} replicas agree on least"
    )


def variance_chart(dv: pd.DataFrame) -> alt.Chart:
    """23_per_example: the observed std of test accuracy across replicas (circles) beside the std
    independent per-example errors would give (diamonds), per setting (analysis.distribution_variance rows)."""
    present = setting_sort(dv["setting"])
    long = dv.melt(
        id_vars=["setting", "n_replicas", "n_examples", "ratio"],
        value_vars=["observed_std", "predicted_std"],
        var_name="kind",
        value_name="std",
    )
    long["kind"] = long["kind"].map({"observed_std": "observed", "predicted_std": "predicted (independent examples)"})
    return (
        alt.Chart(tidy_limit(long))
        .mark_point(filled=True, size=80)
        .encode(
            x=alt.X("std:Q", title="standard deviation of test accuracy", axis=percent_axis(long["std"])),
            y=alt.Y("setting:N", sort=present, title=None),
            color=setting_color(settings=present, legend=None),
            shape=alt.Shape("kind:N", scale=alt.Scale(range=["circle", "diamond"]), title=None),
            tooltip=["setting:N", "kind:N", alt.Tooltip("std:Q", format=".2%")]
            + [alt.Tooltip("ratio:Q", title="variance ratio", format=".2f"), REPLICAS_TOOLTIP]
            + [alt.Tooltip("n_examples:Q", title="test examples")],
        )
        .properties(width=380, title="Observed spread of accuracy against finite-test-set noise")
    )


# Neutral marks for what is not a setting: an observation (dark), its null or a second method
# (light); rare and common subgroups by shape, not colour.
NEUTRAL_DARK = "#333333"  # an observation, or the first of two methods
NEUTRAL_LIGHT = "#AAAAAA"  # its null, or the second method


def null_range_chart(groups: pd.DataFrame, *, label: str, title: str) -> alt.FacetChart:
    """21_per_class and 22_subgroups: each group's accuracy SD across replicas (dark point; a
    triangle for a rare subgroup) against the independent-examples null of that group (light bar:
    central 95 % range, tick: median), one panel per setting. ``groups`` holds
    analysis.spread_null_groups rows with a ``name`` column (the group as the y axis reads it);
    ``label`` is the y axis title."""
    present = setting_sort(groups["setting"])
    shown = groups.assign(kind=groups["rare"].map({True: "rare", False: "common"}).fillna("class"))
    order = shown.sort_values(["class", "group"])["name"].unique().tolist()
    spreads = (
        ("sd", "observed SD"),
        ("null_median", "null median"),
        ("null_lo", "null 2.5 %"),
        ("null_hi", "null 97.5 %"),
    )
    tips = ["setting:N", alt.Tooltip("name:N", title=label), alt.Tooltip("n_examples:Q", title="test examples")]
    tips += [alt.Tooltip(f"{field}:Q", title=text, format=".2%") for field, text in spreads] + [REPLICAS_TOOLTIP]
    y = alt.Y("name:N", sort=order, title=label)
    base = alt.Chart().encode(y=y, tooltip=tips)
    x_title = "SD across replicas"
    band = base.mark_bar(size=8, color=NEUTRAL_LIGHT, opacity=0.6).encode(
        x=alt.X("null_lo:Q", title=x_title, axis=percent_axis(*(shown[c] for c in ("sd", "null_lo", "null_hi")))),
        x2="null_hi:Q",
    )
    median = base.mark_tick(color=NEUTRAL_LIGHT, thickness=2, size=12).encode(x="null_median:Q")
    kinds = [k for k in ("common", "rare") if k in set(shown["kind"])]  # classes: no shape, no legend
    marks = {"common": "circle", "rare": "triangle-up"}
    shape = (
        {"shape": alt.Shape("kind:N", scale=alt.Scale(domain=kinds, range=[marks[k] for k in kinds]), title="subgroup")}
        if kinds
        else {}
    )
    point = base.mark_point(filled=True, size=50, color=NEUTRAL_DARK).encode(x="sd:Q", **shape)
    columns = min(3, max(1, len(present)))
    return (
        alt.layer(band, median, point, data=tidy_limit(shown))
        .properties(width=min(440, 600 // columns - 60), height=max(120, 14 * len(order)))
        .facet(facet=alt.Facet("setting:N", sort=present, title=None), columns=columns)
        .properties(title=title)
    )


def _signed_sd(v: pd.Series) -> pd.Series:
    """A variance as a signed SD, sign(v) sqrt(|v|): monotone, so intervals map to intervals, and a
    negative estimate stays visibly negative."""
    return np.sign(v) * np.sqrt(np.abs(v))


def jordan_direct_chart(variance: pd.DataFrame) -> alt.LayerChart:
    """23_per_example: the variance of accuracy over the data distribution per setting, estimated
    by Jordan's method on the main test set and measured directly on the extra test sets, each
    with its 95 % interval, shown as signed SDs (analysis.variance_direct rows)."""
    present = setting_sort(variance["setting"])
    parts = []
    for method, prefix in (("Jordan (main test set)", "jordan"), ("direct (extra test sets)", "direct")):
        part = variance[["setting", "n_replicas", "n_sets"]].assign(method=method)
        for end in ("var", "lo", "hi"):
            part[end] = _signed_sd(variance[f"{prefix}_{end}"].astype(float))
        parts.append(part.dropna(subset=["var"]))
    long = pd.concat(parts, ignore_index=True)
    methods = ["Jordan (main test set)", "direct (extra test sets)"]
    colour = alt.Color(
        "method:N", sort=methods, scale=alt.Scale(domain=methods, range=[NEUTRAL_DARK, NEUTRAL_LIGHT]), title=None
    )
    base = alt.Chart(tidy_limit(long)).encode(
        y=alt.Y("setting:N", sort=present, title=None),
        yOffset=alt.YOffset("method:N", sort=methods),
        color=colour,
        tooltip=[
            "setting:N",
            "method:N",
            alt.Tooltip("var:Q", title="signed SD", format=".3%"),
            alt.Tooltip("lo:Q", title="95 % CI low", format=".3%"),
            alt.Tooltip("hi:Q", title="95 % CI high", format=".3%"),
            REPLICAS_TOOLTIP,
            alt.Tooltip("n_sets:Q", title="extra test sets"),
        ],
    )
    x = alt.X("lo:Q", title="SD of accuracy over the distribution (signed)", axis=percent_axis(long["lo"], long["hi"]))
    zero = alt.Chart(pd.DataFrame({"x": [0.0]})).mark_rule(color=NEUTRAL_LIGHT, strokeDash=[4, 3]).encode(x="x:Q")
    return (
        zero
        + base.mark_rule(strokeWidth=2).encode(x=x, x2="hi:Q")
        + base.mark_point(filled=True, size=60).encode(
            x="var:Q", shape=alt.Shape("method:N", sort=methods, legend=None)
        )
    ).properties(width=420, title="Variance of accuracy over the data distribution: Jordan's estimate and direct")


def unstable_signals(chosen: pd.DataFrame, signals: np.ndarray, votes: pd.DataFrame, setting: str) -> alt.VConcatChart:
    """23_per_example on 1D data: the ``chosen`` test examples (analysis.unstable_examples rows)
    drawn as the signals they are (``signals`` (N, C, L), channels averaged), above how many
    replicas of ``setting`` predict each class (``votes``: analysis.examples_votes rows; the true
    class outlined). Neutral colours: the votes are counts, not settings."""
    order = [f"#{e} (label {y})" for e, y in zip(chosen["example"], chosen["label"])]
    title = dict(zip(chosen["example"], order))
    values = signals[chosen["example"].to_numpy()].mean(axis=1)  # (k, L)
    lines = pd.DataFrame(
        [
            {"example": title[e], "t": t, "x": float(v)}
            for e, row in zip(chosen["example"], values)
            for t, v in enumerate(row)
        ]
    )
    signal = (
        alt.Chart(tidy_limit(lines))
        .mark_line(color=NEUTRAL_DARK, strokeWidth=1.5)
        .encode(
            x=alt.X("t:Q", title="position", axis=alt.Axis(tickMinStep=10)),
            y=alt.Y("x:Q", title=None, axis=None),
            tooltip=[
                "example:N",
                alt.Tooltip("t:Q", title="position"),
                alt.Tooltip("x:Q", title="value", format=".2f"),
            ],
        )
        .properties(width=110, height=40)
        .facet(facet=alt.Facet("example:N", sort=order, title=None, header=alt.Header(labelFontSize=10)), columns=4)
    )
    shown = votes.assign(
        example=votes["example"].map(title), outcome=votes["correct"].map({True: "right", False: "wrong"})
    )
    y = alt.Y("example:N", sort=order, title=None)
    x = alt.X("prediction:O", title=f"class predicted by the {setting} replicas", axis=alt.Axis(labelAngle=0))
    cells = alt.Chart(tidy_limit(shown)).encode(
        x=x, y=y, tooltip=["example:N", alt.Tooltip("prediction:O", title="predicted class"), "votes:Q", "outcome:N"]
    )
    heat = cells.mark_rect().encode(
        color=alt.Color("votes:Q", scale=alt.Scale(scheme="greys"), title="replicas"),
        stroke=alt.condition(alt.datum.outcome == "right", alt.value("#000000"), alt.value(None)),
        strokeWidth=alt.value(2),
    )
    text = cells.mark_text(fontSize=10).encode(
        text="votes:Q",
        color=alt.condition(alt.datum.votes > chosen["n_replicas"].max() / 2, alt.value("white"), alt.value("black")),
    )
    return alt.vconcat(signal, (heat + text).properties(width=300)).properties(
        title=f"The {len(chosen)} test examples the {setting} replicas agree on least"
    )


# ---- CPU tooling (24_hardware): neutral greys, since configurations and comparisons are no settings
TOOLING_GREY = "#555555"  # marks that stand for no setting


def _churn_format(churn: pd.Series) -> str:
    """The tooling charts' churn format: '.2%' below a 2 % range, else '.1%' (labels never repeat
    either way: :func:`percent_axis` places the ticks)."""
    return ".2%" if len(churn) and float(churn.max()) < 0.02 else ".1%"


def tooling_matrix(compare: pd.DataFrame) -> alt.LayerChart:
    """24_hardware: churn between the models of every pair of hardware labels with the same seeds
    (analysis.hardware_compare rows on one setting: ``churn_matched``), as a symmetric matrix in
    neutral greys with each cell's churn written in it; the diagonal holds the churn within one
    label (``churn_within_a``/``_b``: 0 where its replicas are bit-identical)."""
    cols = ["hardware_a", "hardware_b", "churn_matched", "n_matched", "n_identical"]
    pairs = compare[cols].rename(columns={"churn_matched": "churn"})
    mirror = pairs.rename(columns={"hardware_a": "hardware_b", "hardware_b": "hardware_a"})
    within = pd.concat(
        [
            compare[[f"hardware_{s}", f"churn_within_{s}", f"n_{s}"]].set_axis(
                ["hardware_a", "churn", "n_matched"], axis=1
            )
            for s in ("a", "b")
        ]
    ).drop_duplicates("hardware_a")
    within = within.assign(hardware_b=within["hardware_a"], n_identical=np.nan)
    long = pd.concat([pairs, mirror, within[cols[:1] + ["hardware_b", "churn", "n_matched", "n_identical"]]])
    long = long.dropna(subset=["churn"]).reset_index(drop=True)
    labels = sorted(set(long["hardware_a"]))
    top = float(long["churn"].max()) if len(long) else 0.0
    base = alt.Chart(tidy_limit(long)).encode(
        x=alt.X("hardware_a:N", sort=labels, title="configuration", axis=alt.Axis(labelAngle=-45)),
        y=alt.Y("hardware_b:N", sort=labels, title="configuration"),
    )
    cells = base.mark_rect().encode(
        color=alt.Color(
            "churn:Q",
            scale=alt.Scale(scheme="greys", domain=[0, max(top, 1e-9)]),
            legend=alt.Legend(title="churn", format=_churn_format(long["churn"])),
        ),
        tooltip=[
            alt.Tooltip("hardware_a:N", title="configuration a"),
            alt.Tooltip("hardware_b:N", title="configuration b"),
            alt.Tooltip("churn:Q", format=".2%"),
            alt.Tooltip("n_matched:Q", title="replicas compared"),
            alt.Tooltip("n_identical:Q", title="bit-identical pairs"),
        ],
    )
    text = base.mark_text(fontSize=10).encode(
        text=alt.Text("churn:Q", format=".1%"),
        color=alt.when(alt.datum.churn > top / 2).then(alt.value("white")).otherwise(alt.value("black")),
    )
    side = max(240, 48 * len(labels))
    return (cells + text).properties(
        width=side, height=side, title="Churn between the same seeds' models on two configurations"
    )


def tooling_churn_chart(churn: pd.DataFrame) -> alt.LayerChart:
    """24_hardware: every churn value of analysis.tooling_churn (one tick each) and each group's
    mean (a black diamond), one row per group in analysis.TOOLING_GROUPS order, neutral greys."""
    groups = list(dict.fromkeys(churn["group"]))
    means = churn.groupby("group", as_index=False, sort=False).agg(churn=("churn", "mean"), n=("churn", "size"))
    y = alt.Y("group:N", sort=groups, title=None)
    x = alt.X(
        "churn:Q",
        title="churn (share of test examples)",
        axis=percent_axis(churn["churn"], fmt=_churn_format(churn["churn"])),
    )
    ticks = (
        alt.Chart(tidy_limit(churn))
        .mark_tick(color=TOOLING_GREY, opacity=0.5, thickness=1.5)
        .encode(
            x=x,
            y=y,
            tooltip=[
                "group:N",
                alt.Tooltip("hardware:N", title="configuration"),
                "replica:Q",
                alt.Tooltip("other:N", title="against"),
                alt.Tooltip("churn:Q", format=".2%"),
            ],
        )
    )
    mean = (
        alt.Chart(means)
        .mark_point(shape="diamond", filled=True, size=90, color="black")
        .encode(x=x, y=y, tooltip=["group:N", alt.Tooltip("churn:Q", title="mean churn", format=".2%"), "n:Q"])
    )
    return (ticks + mean).properties(width=440, title="Churn of a tooling change, a ULP poke and new seeds")


def train_seconds_chart(times: pd.DataFrame) -> alt.LayerChart:
    """24_hardware: recorded training seconds per replica per hardware label (analysis.tooling_times
    rows): a bar to the median and a rule from the least to the largest, neutral greys."""
    labels = list(times["hardware"])
    y = alt.Y("hardware:N", sort=labels, title="configuration")
    tips = [
        alt.Tooltip("hardware:N", title="configuration"),
        "threads:N",
        alt.Tooltip("cpu_count:Q", title="CPU cores"),
        "replicas:Q",
        alt.Tooltip("seconds_median:Q", title="median s", format=".1f"),
        alt.Tooltip("seconds_min:Q", title="least s", format=".1f"),
        alt.Tooltip("seconds_max:Q", title="largest s", format=".1f"),
    ]
    base = alt.Chart(tidy_limit(times))
    bars = base.mark_bar(color="#BBBBBB").encode(
        x=alt.X("seconds_median:Q", title="training seconds per replica"), y=y, tooltip=tips
    )
    spread = base.mark_rule(color=TOOLING_GREY).encode(x="seconds_min:Q", x2="seconds_max:Q", y=y, tooltip=tips)
    return (bars + spread).properties(width=420, title="Recorded training time per replica")


def glue_figure(chapter: str, slug: str, chart, text: str, *, n: int, hardware: str, cell: str) -> None:
    """Glue ``chart`` under ``figure_name(chapter, slug)`` and its :func:`caption` under that name
    plus ``-caption``, for a ``{glue:figure}`` directive whose caption is
    ``{glue:text}`<name>-caption```. The chart is also displayed (glued with display=True) and
    the caption below it as Markdown: JupyterLab shows both in the cell, since it renders neither
    glue role; the cell is tagged ``remove-output``, so the book shows the chart once, as the
    glued figure. Returns nothing. (Call it in an executed notebook.)"""
    from IPython.display import Markdown, display  # the kernel's, as myst_nb's glue: imported on use
    from myst_nb import glue  # the book's dependency, not the package's: imported on use

    name = figure_name(chapter, slug)
    text = caption(text, n=n, hardware=hardware, cell=cell)
    glue(name, chart, display=True)
    glue(f"{name}-caption", text, display=False)
    display(Markdown(f"*{name}*: {text}"))


def glue_numbers(values: dict[str, str], prefix: str = "") -> None:
    """Glue every ``name: text`` of ``values`` as ``<prefix><name>`` for ``{glue:text}`` in the
    prose (display=False), and display them as a Markdown table: JupyterLab shows a glue role as
    its bare key, so a student reads the prose's numbers here. Tag the cell ``remove-cell``
    (Lab ignores the tag): the book shows the numbers in the prose, and a toggle over a cell
    that shows nothing would be plumbing (tests/test_book.py). The table comes first (Lab shows
    a cell's first 50 outputs only, and every glued value is one)."""
    from IPython.display import Markdown, display  # the kernel's, as myst_nb's glue: imported on use
    from myst_nb import glue  # the book's dependency, not the package's: imported on use

    rows = "".join(f"| `{prefix}{name}` | {text} |\n" for name, text in values.items())
    display(Markdown(f"Numbers the prose quotes, by the name it uses:\n\n| glued as | value |\n|---|---|\n{rows}"))
    for name, text in values.items():
        glue(f"{prefix}{name}", text, display=False)


# ---- cost of determinism
# Builders of the cost chapter (30_determinism_cost): the overhead sweep per model and per
# MediumCNN kernel size, and how far two replicas drift apart.
COST_CONFIGURATIONS = ("det_full", "det_no_fill", "bf16")  # shown, in this order, when the sweep has them
COST_COLORS = ("#D55E00", "#009E73", "#0072B2")  # Okabe-Ito, given to the configurations present in order
# Where the paper's maximum GPU overheads and the memory fill's reported share sit on the axis.
COST_REFERENCES = {
    "paper max, P100: 746 %": 746,
    "paper max, V100: 241 %": 241,
    "paper max, T4: 196 %": 196,
    "memory fill, Megatron-LM: ~15 %": 15,
}
# symlog: the CPU's noise around 0 % (negative too) and the paper's 746 % on one axis.
_COST_SCALE = {"type": "symlog", "constant": 10, "domain": [-100, 1000]}
DIVERGENCE_COLORS = ("#CC79A7", "#000000", "#E69F00")  # factors of the divergence search, in their order


def cost_configurations(configurations: Iterable[str]) -> list[str]:
    """The configurations of `COST_CONFIGURATIONS` among `configurations`, in that order."""
    present = set(configurations)
    return [c for c in COST_CONFIGURATIONS if c in present]


def cost_color(configurations: list[str]) -> alt.Color:
    """``color=`` of the configurations shown (from :func:`cost_configurations`)."""
    scale = alt.Scale(domain=configurations, range=list(COST_COLORS)[: len(configurations)])
    return alt.Color("configuration:N", sort=configurations, title="configuration", scale=scale)


def _step_tooltips(*extra: alt.Tooltip) -> list:
    """Tooltips of one timed configuration: overhead, median and quartiles of its step times."""
    return [
        "model:N",
        "configuration:N",
        alt.Tooltip("overhead_pct:Q", title="overhead %", format="+.1f"),
        alt.Tooltip("median_ms:Q", title="median step (ms)", format=".1f"),
        alt.Tooltip("q1_ms:Q", title="IQR low (ms)", format=".1f"),
        alt.Tooltip("q3_ms:Q", title="IQR high (ms)", format=".1f"),
        *extra,
        alt.Tooltip("n_steps:Q", title="timed steps"),
    ]


def overhead_chart(timed: pd.DataFrame, model_order: list[str], hardware: str) -> alt.LayerChart:
    """Overhead % of each configuration per model (dot) with its step times' IQR relative to the
    baseline's median (bar), on a symmetric log axis with the reference overheads dashed.

    ``timed``: one row per model x configuration with ``overhead_pct``, ``overhead_lo``,
    ``overhead_hi``, ``median_ms``, ``q1_ms``, ``q3_ms``, ``n_steps``, ``baseline_ms``.
    """
    configurations = cost_configurations(timed["configuration"])
    plot = tidy_limit(
        timed[
            [
                "model",
                "configuration",
                "overhead_pct",
                "overhead_lo",
                "overhead_hi",
                "median_ms",
                "q1_ms",
                "q3_ms",
                "n_steps",
                "baseline_ms",
            ]
        ]
    )
    tips = _step_tooltips(alt.Tooltip("baseline_ms:Q", title="baseline median (ms)", format=".1f"))
    x_scale = alt.Scale(**_COST_SCALE)
    base_layer = alt.Chart(plot).encode(
        y=alt.Y("model:N", sort=model_order, title=None),
        yOffset=alt.YOffset("configuration:N", sort=configurations),
        color=cost_color(configurations),
        tooltip=tips,
    )
    iqr = base_layer.mark_rule(strokeWidth=2).encode(x=alt.X("overhead_lo:Q", scale=x_scale), x2="overhead_hi:Q")
    points = base_layer.mark_point(filled=True, size=60).encode(
        x=alt.X(
            "overhead_pct:Q",
            scale=x_scale,
            title="overhead over the baseline (%, symmetric log scale)",
            axis=alt.Axis(values=[-100, -50, -10, 0, 10, 50, 100, 200, 500, 1000]),
        )
    )
    refs = pd.DataFrame({"overhead_pct": list(COST_REFERENCES.values()), "label": list(COST_REFERENCES)})
    ref_x, ref_tips = alt.X("overhead_pct:Q", scale=x_scale), [alt.Tooltip("label:N", title="reference")]
    rules = alt.Chart(refs).mark_rule(strokeDash=[4, 3], color="#555555").encode(x=ref_x, tooltip=ref_tips)
    labels = (
        alt.Chart(refs)
        .mark_text(angle=270, align="right", baseline="bottom", dx=-4, dy=-2, fontSize=10, color="#555555")
        .encode(x=ref_x, y=alt.value(0), text="label:N", tooltip=ref_tips)
    )
    zero = alt.Chart(pd.DataFrame({"overhead_pct": [0]})).mark_rule(color="black").encode(x=ref_x)
    return alt.layer(zero, rules, labels, iqr, points).properties(
        width=520, height=alt.Step(12), title=f"Step-time overhead per model and configuration ({hardware})"
    )


def kernel_size_chart(medium: pd.DataFrame, configurations: Iterable[str], hardware: str) -> alt.Chart:
    """MediumCNN(k): overhead % against kernel size ``k`` per configuration (line and dots) with
    the IQR bars; a :func:`missing_chart` when the sweep has no MediumCNN. ``configurations``:
    those of the whole sweep, so that colours match :func:`overhead_chart`."""
    if not len(medium):
        return missing_chart(f"no MediumCNN models in the {hardware} sweep")
    shown = cost_configurations(configurations)
    offset = alt.XOffset("configuration:N", sort=shown)
    k_base = alt.Chart(tidy_limit(medium)).encode(
        x=alt.X("k:O", title="kernel size k", axis=alt.Axis(labelAngle=0)),
        color=cost_color(shown),
        tooltip=_step_tooltips(),
    )
    return alt.layer(
        alt.Chart(pd.DataFrame({"y": [0]})).mark_rule(color="black").encode(y="y:Q"),
        k_base.mark_line(point=True).encode(
            y=alt.Y("overhead_pct:Q", title="overhead over the baseline (%)"), xOffset=offset
        ),
        k_base.mark_rule(strokeWidth=2).encode(y="overhead_lo:Q", y2="overhead_hi:Q", xOffset=offset),
    ).properties(width=360, height=220, title=f"MediumCNN(k): overhead against kernel size ({hardware})")


def divergence_chart(histories: dict[str, pd.DataFrame], title: str) -> alt.HConcatChart:
    """Two replica pairs' drift per epoch, one line per factor (the keys of ``histories``, each a
    divergence history with ``epoch``, ``step``, ``weight_l2``, ``n_disagree``, ``disagreement``,
    ``accuracy_a``, ``accuracy_b``): weight distance on a log axis (zero distances have no point),
    and the share of test predictions that differ."""
    factors = list(histories)
    history = pd.concat([h.assign(factor=name) for name, h in histories.items()], ignore_index=True)
    color = alt.Color(
        "factor:N", sort=factors, title="factor", scale=alt.Scale(domain=factors, range=list(DIVERGENCE_COLORS))
    )
    tips = [
        "factor:N",
        "epoch:Q",
        "step:Q",
        alt.Tooltip("weight_l2:Q", title="weight L2", format=".3g"),
        alt.Tooltip("n_disagree:Q", title="predictions that differ"),
        alt.Tooltip("disagreement:Q", title="disagreement", format=".2%"),
        alt.Tooltip("accuracy_a:Q", title="accuracy A", format=".2%"),
        alt.Tooltip("accuracy_b:Q", title="accuracy B", format=".2%"),
    ]
    x = alt.X("epoch:Q", title="epoch")
    l2 = (
        alt.Chart(tidy_limit(history[history.weight_l2 > 0]))
        .mark_line(point=True)
        .encode(
            x=x,
            y=alt.Y(
                "weight_l2:Q",
                scale=alt.Scale(type="log"),
                title="L2 distance between the weights (log)",
                axis=alt.Axis(format=".0e"),
            ),
            color=color,
            tooltip=tips,
        )
        .properties(width=300, height=220, title="Weight distance")
    )
    disagree = (
        alt.Chart(tidy_limit(history))
        .mark_line(point=True)
        .encode(
            x=x,
            y=alt.Y("disagreement:Q", title="test predictions that differ", axis=percent_axis(history["disagreement"])),
            color=color,
            tooltip=tips,
        )
        .properties(width=300, height=220, title="Prediction disagreement")
    )
    return alt.hconcat(l2, disagree).properties(title=title)
