"""The book: its chart renderer and build step, and the built HTML in a real browser.

The built book must work with no network: every page exists, no page loads a script or a
stylesheet from elsewhere, and in headless Chromium every chart is drawn and every formula is
typeset. The pages are served from 127.0.0.1 (file:// URLs restrict scripts) and every request
the browser makes is recorded: a missing local asset fails the test too.
"""

from __future__ import annotations

import fcntl
import functools
import io
import json
import os
import re
import shutil
import subprocess
import threading
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import altair as alt
import nbformat
import pandas as pd
import pytest
from PIL import Image

from nnrandomness import book, charts

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--enable-logging=stderr",
    "--v=0",  # console messages (uncaught errors) go to stderr
    "--virtual-time-budget=5000",  # let scripts (vega-embed, MathJax) finish before the snapshot
]


# ----------------------------------------------------------------------------- the renderer
def small_chart(values=(1, 2, 3)) -> alt.Chart:
    frame = pd.DataFrame({"setting": ["ALGO", "IMPL", "CONTROL"], "churn": list(values)})
    return alt.Chart(frame, title="churn").mark_bar().encode(x="setting:N", y="churn:Q")


def test_render_is_offline_and_stable():
    spec = small_chart().to_dict()
    first, second = charts.render(spec), charts.render(json.loads(json.dumps(spec)))
    assert first == second, "the same chart must render to the same bytes (nbval, git)"
    data, metadata = first
    # Lab's built-in Vega renderer draws the spec; viewers without JavaScript get the SVG.
    assert set(data) == {charts.MIME_TYPE, "image/svg+xml", "text/plain"}
    assert data[charts.MIME_TYPE] == spec
    assert data["image/svg+xml"].startswith("<svg") and "<text" in data["image/svg+xml"]
    assert metadata[charts.MIME_TYPE]["embed_options"]["renderer"] == "svg"
    nbformat.validator.validate(
        nbformat.v4.new_notebook(
            cells=[nbformat.v4.new_code_cell(outputs=[nbformat.v4.new_output("display_data", data)])]
        )
    )  # Altair 6's own v6 key fails here
    html = charts.embed_html(spec)
    div = charts.chart_id(spec, charts.EMBED_OPTIONS)
    assert div in data["text/plain"]
    assert f'<div id="{div}" class="nnr-chart">' in html
    assert "window.vegaEmbed" in html
    assert "http" not in html, "no URL in the book's HTML: the page must not load anything from elsewhere"
    other = charts.embed_html(small_chart((1, 2, 4)).to_dict())
    assert charts.chart_id(small_chart((1, 2, 4)).to_dict(), charts.EMBED_OPTIONS) in other
    assert div not in other, "different data must give a different div id"


def test_render_escapes_script_end():
    frame = pd.DataFrame({"label": ["</script><b>x</b>"], "y": [1]})
    html = charts.embed_html(alt.Chart(frame).mark_point().encode(x="label:N", y="y:Q").to_dict())
    assert html.count("</script>") == 1, "data must not be able to close the chart's <script> early"


def test_enable_uses_the_offline_renderer():
    before = alt.renderers.active
    try:
        charts.enable()
        bundle = small_chart()._repr_mimebundle_()
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        assert set(data) == {charts.MIME_TYPE, "image/svg+xml", "text/plain"}
        assert "nnr-chart-" in data["text/plain"]
    finally:
        alt.renderers.enable(before)


def test_book_renders_charts_with_its_own_mime_renderer():
    """myst-nb finds the book's chart renderer through the package's entry point and prefers it
    to the static SVG in HTML builds."""
    from myst_nb.core.render import MimeData, get_mime_priority, load_mime_renders

    assert book.VegaLiteMime in load_mime_renders(), "reinstall the package: pip install --no-deps -e ."
    priority = get_mime_priority("html", [])
    assert priority.index(charts.MIME_TYPE) < priority.index("image/svg+xml")
    assert priority.index(charts.MIME_TYPE) < priority.index("text/html")
    spec = small_chart().to_dict()
    (node,) = book.VegaLiteMime.handle_mime(None, MimeData(charts.MIME_TYPE, spec), False)
    assert node.astext() == charts.embed_html(spec)
    assert book.VegaLiteMime.handle_mime(None, MimeData("text/plain", "x"), False) is None
    assert book.VegaLiteMime.handle_mime(None, MimeData(charts.MIME_TYPE, spec), True) is None


def test_tidy_limit():
    frame = pd.DataFrame({"x": range(10)})
    assert charts.tidy_limit(frame, max_rows=10) is frame
    with pytest.raises(ValueError, match="11 rows .*aggregate first"):
        charts.tidy_limit(pd.DataFrame({"x": range(11)}), max_rows=10)


def test_setting_colors():
    assert charts.setting_sort(["CONTROL", "ALGO", "ULP"]) == ["ALGO", "CONTROL", "ULP"]
    scale = charts.setting_scale(["IMPL", "ALGO+IMPL"]).to_dict()
    assert scale == {
        "domain": ["ALGO+IMPL", "IMPL"],
        "range": [charts.SETTING_COLORS["ALGO+IMPL"], charts.SETTING_COLORS["IMPL"]],
    }
    assert len(set(charts.SETTING_COLORS.values())) == len(charts.SETTING_COLORS), "one colour per setting"
    with pytest.raises(ValueError, match="unknown setting"):
        charts.setting_sort(["ALGO", "NOPE"])


def test_settings_cover_the_package():
    from nnrandomness import SETTINGS

    assert set(charts.SETTING_COLORS) == set(SETTINGS), "every setting of noise.SETTINGS needs a colour"


def test_figure_names_and_captions():
    assert charts.figure_name("topline", "accuracy-spread") == "fig-topline-accuracy-spread"
    with pytest.raises(ValueError):
        charts.figure_name("20_topline", "Accuracy")
    text = charts.caption("Spread of test accuracy", n=10, hardware="cpu-1t", cell="digits/smallcnn")
    assert text == "Spread of test accuracy. n = 10 replicas per setting; cpu-1t; digits/smallcnn."


def test_committed_bundle_matches_altair():
    # The bundle must be the one for the Vega-Lite version Altair emits; the build step rewrites it.
    book.check_assets(ROOT, "mathjax/tex-chtml-full.js")
    head = (ROOT / "_static" / charts.BUNDLE_NAME).read_text(encoding="utf-8")[:2000]
    assert "(function () {" in head, "the bundle must be wrapped in an IIFE (its consts clash with Sphinx's)"


# ----------------------------------------------------------------------------- the chapters' cells
GLUE_RECORD = "application/papermill.record/"  # how myst-nb's glue stores a value (display=False)


def shown_in_book(cell) -> list[dict]:
    """The outputs the book shows for a code cell: none if a tag removes them; a glued value
    (display=False) never shows where it is computed, only where the prose pastes it."""
    tags = set(cell.metadata.get("tags", []))
    if tags & {"remove-cell", "remove-output"}:
        return []
    return [o for o in cell.get("outputs", []) if not all(k.startswith(GLUE_RECORD) for k in o.get("data", {"x": 0}))]


def glues_a_figure(cell) -> bool:
    return any(k.endswith((charts.MIME_TYPE, "image/png")) for o in cell.get("outputs", []) for k in o.get("data", {}))


def test_plumbing_cells_are_removed_from_the_book():
    """A cell whose code the book hides and that shows nothing there (it computes and glues the
    prose's numbers) is removed whole (remove-cell): the book would show only a 'Show code cell
    source' toggle over plumbing. A figure's cell keeps its toggle: the chart's code is worth
    opening. JupyterLab ignores these tags: a student still sees every cell and its tables."""
    problems, checked = [], 0
    for path in book.chapter_notebooks(ROOT):
        nb = nbformat.read(str(path), as_version=4)
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            checked += 1
            tags = set(cell.metadata.get("tags", []))
            hidden = bool(tags & {"hide-input", "remove-input"})
            if hidden and not shown_in_book(cell) and not glues_a_figure(cell) and "remove-cell" not in tags:
                problems.append(f"{path.name} cell {index} ({cell.source.splitlines()[0][:60]!r}): tag it remove-cell")
    assert checked > 100, f"only {checked} code cells found in the chapters"
    assert not problems, "cells that would show only a code toggle in the book:\n" + "\n".join(problems)


def test_the_plumbing_check_can_fail():
    glue_only = nbformat.v4.new_code_cell("glue('x', 1, display=False)", metadata={"tags": ["hide-input"]})
    glue_only.outputs = [nbformat.v4.new_output("display_data", {GLUE_RECORD + "text/plain": "1"})]
    assert shown_in_book(glue_only) == [] and not glues_a_figure(glue_only)
    table = nbformat.v4.new_output("display_data", {"text/markdown": "| a |"})
    glue_only.outputs.append(table)
    assert shown_in_book(glue_only) == [table]
    figure = nbformat.v4.new_output("display_data", {GLUE_RECORD + charts.MIME_TYPE: {}})
    assert glues_a_figure(nbformat.v4.new_code_cell(outputs=[figure]))


# ----------------------------------------------------------------------------- the build step
def test_toc_lists_existing_pages():
    stems = book.toc_entries(ROOT)
    assert stems[0] == "intro" and "notebooks/99_references" == stems[-1]
    assert [s for s in stems if book.resolve(ROOT, s) is None] == []


def test_execution_is_reproducible(tmp_path):
    """Executing a chapter twice gives the same file: timing metadata is stripped, chart ids are
    content hashes, and nothing else in an output depends on the run."""
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# A chapter"),
            nbformat.v4.new_code_cell("import pandas as pd\nfrom nnrandomness import charts\n\ncharts.enable()"),
            nbformat.v4.new_code_cell(
                "frame = pd.DataFrame({'setting': ['ALGO', 'IMPL'], 'churn': [0.1, 0.2]})\nframe"
            ),
            nbformat.v4.new_code_cell("charts.settings_legend(frame['setting'])"),
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    path = tmp_path / "chapter.ipynb"
    nbformat.write(nb, str(path))
    assert book.execute_notebook(path) is True
    executed = nbformat.read(str(path), as_version=4)
    assert [c.execution_count for c in executed.cells if c.cell_type == "code"] == [1, 2, 3]
    assert all("execution" not in c.metadata for c in executed.cells)
    assert book.execute_notebook(path) is False, "a second execution must leave the file unchanged"


# ----------------------------------------------------------------------------- the built book
def built_book(tmp_path_factory) -> Path:
    """The book built from the committed outputs (no execution) into a temporary folder, once per
    test session: this module and test_layout.py share it, and under pytest-xdist the first
    worker to need it builds it (under a lock) in the session's folder that all workers share."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # .../pytest-N, one per session; each worker's own is .../pytest-N/popen-gwK
    out, done = base / "book", base / "book.built"
    with open(base / "book.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, however the build ends
        if not done.is_file():
            shutil.rmtree(out, ignore_errors=True)  # a build that failed half-way in another module
            result = subprocess.run(
                book.build_command(ROOT, out), cwd=ROOT, capture_output=True, text=True, timeout=900
            )
            assert result.returncode == 0, (
                f"jupyter-book build failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
            )
            done.touch()
    return out / "_build" / "html"


@pytest.fixture(scope="module")
def html_dir(tmp_path_factory) -> Path:
    return built_book(tmp_path_factory)


def test_download_links_resolve_to_tables(html_dir):
    # 11_runs links the run store summary and the overhead sweeps; the built (offline) book must carry them.
    from urllib.parse import unquote

    page = html_dir / "notebooks" / "11_runs.html"
    hrefs = re.findall(r'<a class="reference download internal"[^>]*href="([^"]+\.(?:csv|parquet))"', page.read_text())
    names = sorted(Path(unquote(h)).name for h in hrefs)
    assert names == ["overhead.csv", "overhead.parquet", "runs.csv", "runs.parquet"]
    for h in hrefs:
        f = (page.parent / unquote(h)).resolve()
        assert f.is_file() and html_dir.resolve() in f.parents, h
        frame = pd.read_csv(f) if f.suffix == ".csv" else pd.read_parquet(f)
        assert len(frame) and {"hardware", "model", "git_commit", "git_commit_date"} <= set(frame.columns), h


class Assets(HTMLParser):
    """URLs a page loads (scripts, stylesheets, images, frames) and the bodies of inline scripts."""

    LOADS = {
        "script": "src",
        "img": "src",
        "iframe": "src",
        "source": "src",
        "video": "src",
        "audio": "src",
        "embed": "src",
        "link": "href",
    }

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in self.LOADS and attrs.get(self.LOADS[tag]):
            self.urls.append(attrs[self.LOADS[tag]])
        self._in_script = tag == "script" and not attrs.get("src")
        if self._in_script:
            self.inline.append("")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.inline[-1] += data


def parse(page: Path) -> Assets:
    parser = Assets()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def pages(html_dir: Path) -> list[Path]:
    return sorted(p for p in html_dir.rglob("*.html") if "_static" not in p.parts and "_sources" not in p.parts)


def test_every_page_is_built(html_dir):
    missing = [s for s in book.toc_entries(ROOT) if not (html_dir / f"{s}.html").is_file()]
    assert not missing, f"pages listed in _toc.yml but not built: {missing}"


REMOTE = re.compile(r"^([a-z][a-z0-9+.-]*:|//)", re.I)  # a scheme (https:, data:, ...) or protocol-relative
NETWORK_IN_SCRIPT = re.compile(r"https?://|//cdn\.|cdn\.jsdelivr|unpkg\.com|cdnjs", re.I)


def test_pages_load_nothing_from_elsewhere(html_dir):
    problems = []
    for page in pages(html_dir):
        assets = parse(page)
        rel = page.relative_to(html_dir)
        problems += [f"{rel}: loads {url}" for url in assets.urls if REMOTE.match(url) and not url.startswith("data:")]
        for body in assets.inline:
            hit = NETWORK_IN_SCRIPT.search(body)
            if hit:
                problems.append(f"{rel}: inline script mentions {body[max(0, hit.start() - 60) : hit.end() + 60]!r}")
    for css in (html_dir / "_static").rglob("*.css"):
        for url in re.findall(
            r"@import\s+(?:url\()?['\"]?([^'\")\s;]+)|url\(['\"]?(https?:[^'\")]+)",
            css.read_text(encoding="utf-8", errors="replace"),
        ):
            url = next(u for u in url if u)
            if REMOTE.match(url) and not url.startswith("data:"):
                problems.append(f"{css.relative_to(html_dir)}: imports {url}")
    assert not problems, "the book must work offline; remote loads:\n" + "\n".join(problems)


def test_figures_show_once_and_lab_only_outputs_not_at_all(html_dir):
    """Glued figures are displayed by their cells for JupyterLab (remove-output): the book shows
    each chart once, where its directive is, and not the Lab-only captions and number tables."""
    problems, figures = [], 0
    for page in pages(html_dir):
        text = page.read_text(encoding="utf-8")
        ids = chart_ids(page)
        figures += len(ids)
        problems += [f"{page.name}: chart {i} shown {ids.count(i)} times" for i in sorted(set(ids)) if ids.count(i) > 1]
        if "Numbers the prose quotes" in text or re.search(r"<em>fig-[a-z0-9-]+</em>:", text):
            problems.append(f"{page.name}: shows an output meant for JupyterLab only (remove-output missing)")
    assert figures > 10, "the book's figures were not found: this check would prove nothing"
    assert not problems, "\n".join(problems)


def test_every_chart_has_tooltips(html_dir):
    """Every chart of the book shows its numbers on hover: its spec encodes a tooltip somewhere."""
    problems, seen = [], 0
    for page in pages(html_dir):
        text = page.read_text(encoding="utf-8")
        for div, script in re.findall(
            r'<div id="(nnr-chart-[0-9a-f]+)" class="nnr-chart">.*?<script[^>]*>(.*?)</script>', text, re.S
        ):
            seen += 1
            if '"tooltip"' not in script:
                problems.append(f"{page.relative_to(html_dir)}: chart {div} has no tooltip")
    assert seen > 10, f"only {seen} charts found"
    assert not problems, "\n".join(problems)


def test_mathjax_loads_once_and_only_with_math(html_dir):
    """The vendored MathJax comes from Sphinx's mathjax extension alone (deferred, after its
    configuration), not also from Jupyter Book's every-*.js-in-_static list."""
    problems = []
    for page in pages(html_dir):
        loads = [u for u in parse(page).urls if "mathjax/" in u]
        expected = 1 if math_count(page) else 0
        if len(loads) != expected:
            problems.append(f"{page.relative_to(html_dir)}: MathJax loaded {len(loads)} times, expected {expected}")
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- in a browser
class Server:
    """The built book on 127.0.0.1, recording (status, path) of every request."""

    def __init__(self, directory: Path):
        self.requests: list[tuple[int, str]] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def log_request(self, code="-", size="-"):
                server.requests.append((int(code) if str(code).isdigit() else 0, self.path))

            def log_message(self, *args):  # quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    if shutil.which(CHROMIUM) is None:
        pytest.fail("chromium is not installed: run `make browser` (apt-get install chromium, as root)")
    profile = tmp_path / "chromium-profile"
    cmd = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def chart_ids(page: Path) -> list[str]:
    return re.findall(r'<div id="(nnr-chart-[0-9a-f]+)" class="nnr-chart"', page.read_text(encoding="utf-8"))


def math_count(page: Path) -> int:
    return len(re.findall(r'class="math notranslate nohighlight"', page.read_text(encoding="utf-8")))


def element(dom: str, element_id: str) -> str:
    """The markup from the element with this id to the end of its subtree (good enough: the chart
    div is followed by its script, whose text never contains '<svg')."""
    start = dom.find(f'id="{element_id}"')
    end = dom.find("<script", start)
    return dom[start:end] if start >= 0 else ""


def browser_pages(html_dir: Path) -> list[Path]:
    """The analysis chapters, and every other page with a chart or a formula."""
    analysis = {s for s in book.toc_entries(ROOT) if re.match(r"notebooks/[23]\d_", s)}
    chosen = [
        p
        for p in pages(html_dir)
        if p.relative_to(html_dir).with_suffix("").as_posix() in analysis or chart_ids(p) or math_count(p)
    ]
    return chosen


def test_charts_and_formulas_render_in_chromium(html_dir, tmp_path):
    chosen = browser_pages(html_dir)
    all_charts = sum(len(chart_ids(p)) for p in chosen)
    all_math = sum(math_count(p) for p in chosen)
    # Guards: a book without charts or formulas would pass the checks below vacuously.
    assert all_charts > 0, "no chart in the book: the browser check would prove nothing"
    assert all_math > 0, "no formula in the book: the MathJax check would prove nothing"

    problems = []
    with Server(html_dir) as server:
        for page in chosen:
            rel = page.relative_to(html_dir).as_posix()
            result = chromium(["--dump-dom", f"{server.url}/{rel}"], tmp_path)
            dom = result.stdout
            if "</html>" not in dom:
                problems.append(f"{rel}: chromium returned no DOM (exit {result.returncode}): {result.stderr[-500:]}")
                continue
            for line in result.stderr.splitlines():
                if "CONSOLE" in line and "Uncaught" in line:
                    problems.append(f"{rel}: {line.split('] ', 1)[-1]}")
            for div in chart_ids(page):
                inside = element(dom, div)
                if "vega-embed" not in inside or not re.search(r"<(svg|canvas)\b", inside):
                    problems.append(f"{rel}: chart {div} was not drawn: {inside[:300]!r}")
            expected = math_count(page)
            drawn = dom.count("<mjx-container")
            if drawn < expected:
                problems.append(f"{rel}: {drawn} of {expected} formulas typeset by MathJax")
            if "<mjx-merror" in dom:
                problems.append(f"{rel}: MathJax reports an error in a formula")
        # One screenshot of a page with a chart: the pixels, not only the DOM.
        shot_page = next(p for p in chosen if chart_ids(p))
        shot = tmp_path / "page.png"
        chromium(
            [
                f"--screenshot={shot}",
                "--window-size=1200,2000",
                f"{server.url}/{shot_page.relative_to(html_dir).as_posix()}",
            ],
            tmp_path,
        )
        missing = sorted({path for status, path in server.requests if status >= 400 and path != "/favicon.ico"})
    assert not missing, f"the pages requested files that the book does not have: {missing}"
    assert not problems, "\n".join(problems)

    assert shot.is_file(), "chromium wrote no screenshot"
    image = Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")
    assert image.size == (1200, 2000)
    colours = image.resize((300, 500)).getcolors(maxcolors=1 << 16) or []
    assert len(colours) > 50, f"the screenshot of {shot_page.name} is nearly blank ({len(colours)} colours)"
