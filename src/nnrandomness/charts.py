"""Altair charts for the book: an offline renderer and the helpers every analysis chapter shares.

Rendering
---------
Altair's own renderers do not fit an offline book: ``html`` loads Vega from a CDN (blank charts
without network), ``mimetype`` writes an invalid output key with Altair 6.3 (the book build
crashes), and both give every chart a random ``altair-viz-<uuid>`` id (nbval and git see a
change on every run). ``enable()`` switches to a small renderer of our own whose output is

* ``text/html``: a ``<div id="nnr-chart-<hash of the spec>">`` holding a short note, and a script
  that replaces the note by the chart with ``window.vegaEmbed`` where the page provides it.
  The book provides it: ``_static/vega-bundle.js`` (written by :func:`write_bundle`, loaded on
  every page) bundles vega, vega-lite and vega-embed for the Vega-Lite version Altair emits.
  JupyterLab, GitHub and nbviewer do not: they show the note, which says how to see the chart.
* ``text/plain``: one line naming the chart.

The id is a hash of the spec, so re-running a chapter on the same data gives byte-identical
output. Data is embedded in the page: aggregate first (:func:`tidy_limit`).

Shared helpers
--------------
:func:`tidy_limit` (row cap), :func:`setting_color` / :func:`setting_scale` /
:data:`SETTING_ORDER` (one colour per noise setting in every chart), :func:`figure_name` and
:func:`caption` (figure names and captions, see the convention below).

Convention for figures in the chapters: glue the chart (``myst_nb.glue(name, chart,
display=False)``) under ``figure_name(chapter, slug)`` (``fig-<chapter>-<slug>``) and place it
with a ``{glue:figure}`` directive whose caption comes from :func:`caption` (via a glued
string) or is written in the prose; captions say what is shown, then n, hardware and cell.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Iterable

import altair as alt
import pandas as pd

__all__ = [
    "BUNDLE_NAME",
    "COST_COLORS",
    "COST_CONFIGURATIONS",
    "COST_REFERENCES",
    "DIVERGENCE_COLORS",
    "MAX_ROWS",
    "RENDERER",
    "SETTING_COLORS",
    "SETTING_ORDER",
    "bundle_header",
    "caption",
    "chart_id",
    "cost_color",
    "cost_configurations",
    "divergence_chart",
    "enable",
    "figure_name",
    "kernel_size_chart",
    "overhead_chart",
    "render",
    "setting_color",
    "setting_scale",
    "settings_legend",
    "setting_sort",
    "tidy_limit",
    "write_bundle",
]

# ----------------------------------------------------------------------------- rendering
RENDERER = "nnrandomness"  # name under which enable() registers the renderer with Altair
BUNDLE_NAME = "vega-bundle.js"  # file in the book's _static/ that defines window.vegaEmbed
ID_PREFIX = "nnr-chart-"
# Embed options: SVG (crisp, and testable in the DOM); the actions menu without the editor
# link, which would leave the offline book for vega.github.io.
EMBED_OPTIONS = {
    "mode": "vega-lite",
    "renderer": "svg",
    "actions": {"export": True, "source": True, "compiled": False, "editor": False},
}
FALLBACK_NOTE = (
    "Interactive chart: it is drawn in the built book (make book). To see it here, offline, "
    "run <code>alt.renderers.enable(\"svg\")</code> and re-run this cell."
)


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


def render(spec: dict, **metadata) -> dict:
    """Altair renderer: the mimebundle of one chart (see the module docstring)."""
    options = {**EMBED_OPTIONS, **(metadata.get("embed_options") or {})}
    div = chart_id(spec, options)
    # "$schema" is only a version tag (mode is given explicitly); leaving it out keeps URLs out
    # of inline scripts, which the book's tests scan for network loads.
    payload = {k: v for k, v in spec.items() if k != "$schema"}
    # "</" inside a JSON string would end the <script> element early.
    spec_js = _canonical(payload).replace("</", "<\\/")
    options_js = _canonical(options)
    html_out = (
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
    title = spec.get("title")
    if isinstance(title, dict):
        title = title.get("text")
    return {"text/html": html_out, "text/plain": f"<chart {div}: {title or 'untitled'}>"}


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


# ----------------------------------------------------------------------------- settings
# The order of the settings in every legend, axis and table: the paper's four, then the
# single-source decomposition of ALGO, then the smallest perturbation.
SETTING_ORDER = ("ALGO+IMPL", "ALGO", "IMPL", "CONTROL", "INIT", "ORDER", "AUG", "DROPOUT", "ULP")
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
}
assert tuple(SETTING_COLORS) == SETTING_ORDER


def setting_sort(settings: Iterable[str] | None = None) -> list[str]:
    """The given settings (default: all) in the book's order; an unknown name is an error."""
    if settings is None:
        return list(SETTING_ORDER)
    given = list(dict.fromkeys(settings))
    unknown = [s for s in given if s not in SETTING_COLORS]
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; known settings: {', '.join(SETTING_ORDER)}")
    return [s for s in SETTING_ORDER if s in given]


def setting_scale(settings: Iterable[str] | None = None) -> alt.Scale:
    """Colour scale of the settings; pass the settings present to keep the legend short."""
    domain = setting_sort(settings)
    return alt.Scale(domain=domain, range=[SETTING_COLORS[s] for s in domain])


def setting_color(field: str = "setting", settings: Iterable[str] | None = None, title: str = "setting",
                  **kwargs) -> alt.Color:
    """``color=`` encoding for a column of setting names, the same colours in every chart."""
    return alt.Color(f"{field}:N", scale=setting_scale(settings), sort=setting_sort(settings), title=title,
                     **kwargs)


def settings_legend(settings: Iterable[str] | None = None) -> alt.Chart:
    """A strip of the settings in their colours, for the chapters that introduce them."""
    order = setting_sort(settings)
    frame = pd.DataFrame({"setting": order})
    return (
        alt.Chart(frame, title="The settings, in the colours every chart gives them")
        .mark_square(size=300, opacity=1)
        .encode(x=alt.X("setting:N", sort=order, title=None, axis=alt.Axis(labelAngle=0)),
                color=setting_color(settings=order, legend=None), tooltip=["setting:N"])
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
# Builders shared by two or more analysis chapters (20_topline ... 24_hardware, 11_runs); a
# chart only one chapter draws stays in that chapter's hidden plotting cell.


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


def setting_points(frame: pd.DataFrame, value: str, *, lo: str | None = None, hi: str | None = None,
                   axis_title: str, fmt: str = ".2%", title: str | None = None,
                   tooltip: Iterable[alt.Tooltip] = (), settings: Iterable[str] | None = None) -> alt.LayerChart:
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
        tips += [alt.Tooltip(f"{lo}:Q", title="95% CI low", format=fmt),
                 alt.Tooltip(f"{hi}:Q", title="95% CI high", format=fmt)]
    tips += list(tooltip)
    color = setting_color(settings=present, legend=None)
    point = alt.Chart().mark_point(filled=True, size=70).encode(
        x=alt.X(f"{value}:Q", title=axis_title, axis=alt.Axis(format=fmt)), y=y, color=color, tooltip=tips)
    layers = [point]
    if lo and hi:
        layers.insert(0, alt.Chart().mark_rule(strokeWidth=2).encode(
            x=alt.X(f"{lo}:Q"), x2=alt.X2(f"{hi}:Q"), y=y, color=color, tooltip=tips))
    chart = alt.layer(*layers, data=frame)
    return chart.properties(title=title) if title else chart


def glue_figure(chapter: str, slug: str, chart, text: str, *, n: int, hardware: str, cell: str) -> None:
    """Glue ``chart`` under ``figure_name(chapter, slug)`` and its :func:`caption` under that name
    plus ``-caption``, for a ``{glue:figure}`` directive whose caption is
    ``{glue:text}`<name>-caption```. Returns nothing, so that a cell ending with it shows no
    output. (Call it in an executed notebook.)"""
    from myst_nb import glue  # the book's dependency, not the package's: imported on use

    name = figure_name(chapter, slug)
    glue(name, chart, display=False)
    glue(f"{name}-caption", caption(text, n=n, hardware=hardware, cell=cell), display=False)


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
    return ["model:N", "configuration:N", alt.Tooltip("overhead_pct:Q", title="overhead %", format="+.1f"),
            alt.Tooltip("median_ms:Q", title="median step (ms)", format=".1f"),
            alt.Tooltip("q1_ms:Q", title="IQR low (ms)", format=".1f"),
            alt.Tooltip("q3_ms:Q", title="IQR high (ms)", format=".1f"), *extra,
            alt.Tooltip("n_steps:Q", title="timed steps")]


def overhead_chart(timed: pd.DataFrame, model_order: list[str], hardware: str) -> alt.LayerChart:
    """Overhead % of each configuration per model (dot) with its step times' IQR relative to the
    baseline's median (bar), on a symmetric log axis with the reference overheads dashed.

    ``timed``: one row per model x configuration with ``overhead_pct``, ``overhead_lo``,
    ``overhead_hi``, ``median_ms``, ``q1_ms``, ``q3_ms``, ``n_steps``, ``baseline_ms``.
    """
    configurations = cost_configurations(timed["configuration"])
    plot = tidy_limit(timed[["model", "configuration", "overhead_pct", "overhead_lo", "overhead_hi", "median_ms",
                             "q1_ms", "q3_ms", "n_steps", "baseline_ms"]])
    tips = _step_tooltips(alt.Tooltip("baseline_ms:Q", title="baseline median (ms)", format=".1f"))
    x_scale = alt.Scale(**_COST_SCALE)
    base_layer = alt.Chart(plot).encode(y=alt.Y("model:N", sort=model_order, title=None),
                                        yOffset=alt.YOffset("configuration:N", sort=configurations),
                                        color=cost_color(configurations), tooltip=tips)
    iqr = base_layer.mark_rule(strokeWidth=2).encode(x=alt.X("overhead_lo:Q", scale=x_scale), x2="overhead_hi:Q")
    points = base_layer.mark_point(filled=True, size=60).encode(
        x=alt.X("overhead_pct:Q", scale=x_scale, title="overhead over the baseline (%, symmetric log scale)",
                axis=alt.Axis(values=[-100, -50, -10, 0, 10, 50, 100, 200, 500, 1000])))
    refs = pd.DataFrame({"overhead_pct": list(COST_REFERENCES.values()), "label": list(COST_REFERENCES)})
    ref_x, ref_tips = alt.X("overhead_pct:Q", scale=x_scale), [alt.Tooltip("label:N", title="reference")]
    rules = alt.Chart(refs).mark_rule(strokeDash=[4, 3], color="#555555").encode(x=ref_x, tooltip=ref_tips)
    labels = alt.Chart(refs).mark_text(angle=270, align="right", baseline="bottom", dx=-4, dy=-2, fontSize=10,
                                       color="#555555").encode(x=ref_x, y=alt.value(0), text="label:N",
                                                               tooltip=ref_tips)
    zero = alt.Chart(pd.DataFrame({"overhead_pct": [0]})).mark_rule(color="black").encode(x=ref_x)
    return alt.layer(zero, rules, labels, iqr, points).properties(
        width=520, height=alt.Step(12), title=f"Step-time overhead per model and configuration ({hardware})")


def kernel_size_chart(medium: pd.DataFrame, configurations: Iterable[str], hardware: str) -> alt.Chart:
    """MediumCNN(k): overhead % against kernel size ``k`` per configuration (line and dots) with
    the IQR bars; a :func:`missing_chart` when the sweep has no MediumCNN. ``configurations``:
    those of the whole sweep, so that colours match :func:`overhead_chart`."""
    if not len(medium):
        return missing_chart(f"no MediumCNN models in the {hardware} sweep")
    shown = cost_configurations(configurations)
    offset = alt.XOffset("configuration:N", sort=shown)
    k_base = alt.Chart(tidy_limit(medium)).encode(
        x=alt.X("k:O", title="kernel size k", axis=alt.Axis(labelAngle=0)), color=cost_color(shown),
        tooltip=_step_tooltips())
    return alt.layer(
        alt.Chart(pd.DataFrame({"y": [0]})).mark_rule(color="black").encode(y="y:Q"),
        k_base.mark_line(point=True).encode(y=alt.Y("overhead_pct:Q", title="overhead over the baseline (%)"),
                                            xOffset=offset),
        k_base.mark_rule(strokeWidth=2).encode(y="overhead_lo:Q", y2="overhead_hi:Q", xOffset=offset),
    ).properties(width=360, height=220, title=f"MediumCNN(k): overhead against kernel size ({hardware})")


def divergence_chart(histories: dict[str, pd.DataFrame], title: str) -> alt.HConcatChart:
    """Two replica pairs' drift per epoch, one line per factor (the keys of ``histories``, each a
    divergence history with ``epoch``, ``step``, ``weight_l2``, ``n_disagree``, ``disagreement``,
    ``accuracy_a``, ``accuracy_b``): weight distance on a log axis (zero distances have no point),
    and the share of test predictions that differ."""
    factors = list(histories)
    history = pd.concat([h.assign(factor=name) for name, h in histories.items()], ignore_index=True)
    color = alt.Color("factor:N", sort=factors, title="factor",
                      scale=alt.Scale(domain=factors, range=list(DIVERGENCE_COLORS)))
    tips = ["factor:N", "epoch:Q", "step:Q", alt.Tooltip("weight_l2:Q", title="weight L2", format=".3g"),
            alt.Tooltip("n_disagree:Q", title="predictions that differ"),
            alt.Tooltip("disagreement:Q", title="disagreement", format=".2%"),
            alt.Tooltip("accuracy_a:Q", title="accuracy A", format=".2%"),
            alt.Tooltip("accuracy_b:Q", title="accuracy B", format=".2%")]
    x = alt.X("epoch:Q", title="epoch")
    l2 = alt.Chart(tidy_limit(history[history.weight_l2 > 0])).mark_line(point=True).encode(
        x=x, y=alt.Y("weight_l2:Q", scale=alt.Scale(type="log"), title="L2 distance between the weights (log)",
                     axis=alt.Axis(format=".0e")),
        color=color, tooltip=tips).properties(width=300, height=220, title="Weight distance")
    disagree = alt.Chart(tidy_limit(history)).mark_line(point=True).encode(
        x=x, y=alt.Y("disagreement:Q", title="test predictions that differ", axis=alt.Axis(format=".2%")),
        color=color, tooltip=tips).properties(width=300, height=220, title="Prediction disagreement")
    return alt.hconcat(l2, disagree).properties(title=title)
