"""Build the book: check its assets, execute its chapters in place, then run Jupyter Book.

    python -m nnrandomness.book                     # execute every chapter, build _build/html
    python -m nnrandomness.book --no-execute        # build from the committed outputs only
    python -m nnrandomness.book --only 20_topline   # execute one chapter (repeatable), then build

`make book` runs the default plan first (``nnrandomness run plans/default.yaml`` fills
``data/runs/``), then this. Jupyter Book's own execution is off (_config.yml): its cache hashes
only code, so it would miss new run data. Instead every notebook in _toc.yml is executed here
with nbclient, two at a time (started in _toc.yml order; chapters only read the run store, so
their order does not matter):

* in place: the outputs committed with a chapter are the ones the book shows and nbval checks;
* with the notebook's own parameters: nothing is injected, so the training chapter
  (10_training) runs its tiny default, which writes to a temporary directory, never to data/;
* with the kernel's working directory in the notebook's folder, progress bars off and one
  thread for OpenMP/MKL/OpenBLAS (and so torch): the thread count changes float results;
* with run-dependent metadata stripped (execution timestamps, papermill's durations), and
  written only when something changed, so a second build on the same machine leaves
  ``git status`` clean.

A notebook that fails is not written; the executed copy goes to ``_build/failed/`` and the
build stops. A cell that must fail carries the ``raises-exception`` tag.

This module is also a small Sphinx extension (``sphinx: extra_extensions`` in _config.yml) that
keeps the pages free of network loads, see :func:`setup`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from pathlib import Path, PurePosixPath

import yaml

from . import environment, executed

# ----------------------------------------------------------------------------- settings
STATIC = "_static"
MATHJAX_DIR = "mathjax"  # vendored MathJax under _static/ (see its README)
MIME_ENTRY_GROUP = "myst_nb.mime_renderers"  # where myst-nb looks for VegaLiteMime
# Environment of every chapter's kernel, on top of the caller's.
KERNEL_ENV = {
    "TQDM_DISABLE": "1",  # progress bars are output that changes run to run
    "OMP_NUM_THREADS": "1",  # torch's intra-op threads follow this; 1 vs 2 threads changes bits
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",  # numpy's BLAS (Gram matrices of the L2 distances)
    "PYTHONHASHSEED": "0",  # set iteration order, should any output depend on it
}
CELL_TIMEOUT_S = 600  # per cell; the whole `make book` must fit in 10 minutes on 2 cores
JOBS = 2  # notebooks executed at once: one single-threaded kernel per core of the 2-core target


# ----------------------------------------------------------------------------- the toc
def toc_entries(root: Path) -> list[str]:
    """File stems of _toc.yml (root first, then parts/chapters/sections in order)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
    stems = [toc["root"]]

    def walk(items):
        for item in items or ():
            if "file" in item:
                stems.append(item["file"])
            walk(item.get("sections"))

    for part in toc.get("parts", ()):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return stems


def resolve(root: Path, stem: str) -> Path | None:
    """The source file of a toc entry (.ipynb before .md, as Jupyter Book resolves it), or None."""
    for suffix in (".ipynb", ".md"):
        path = root / (stem + suffix)
        if path.exists():
            return path
    return None


def chapter_notebooks(root: Path) -> list[Path]:
    """The notebooks of the book, in toc order; raises listing toc entries that have no file."""
    stems = toc_entries(root)
    missing = [s for s in stems if resolve(root, s) is None]
    if missing:
        raise SystemExit(f"_toc.yml lists pages that do not exist (no .ipynb or .md): {', '.join(missing)}")
    return [p for p in (resolve(root, s) for s in stems) if p.suffix == ".ipynb"]


def select(notebooks: list[Path], root: Path, only: list[str]) -> list[Path]:
    """The notebooks named by --only (stem, relative path, with or without .ipynb)."""
    chosen = []
    for name in only:
        key = name.removesuffix(".ipynb")
        hits = [p for p in notebooks if key in (p.stem, p.relative_to(root).with_suffix("").as_posix())]
        if not hits:
            names = ", ".join(p.stem for p in notebooks)
            raise SystemExit(f"--only {name!r} is not a notebook of the book; notebooks: {names}")
        chosen += [p for p in hits if p not in chosen]
    return chosen


# ----------------------------------------------------------------------------- execution
class KernelStartError(RuntimeError):
    """The kernel did not start (no cell ran): worth one retry, unlike an error in a cell."""


def execute_notebook(
    path: Path, timeout: int = CELL_TIMEOUT_S, failed_dir: Path | None = None, kernel_log: Path | None = None
) -> bool:
    """Execute one notebook in place; returns whether its file changed. Raises on a cell error.

    failed_dir: where the executed copy of a failing notebook goes. kernel_log: file for the
    kernel process's own stderr (its start-up messages, a crash); cell output is not in it.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
    started = []  # cells that began to run: none means the kernel never came up
    client = NotebookClient(
        nb,
        timeout=timeout,
        resources={"metadata": {"path": str(path.parent)}},  # kernel cwd: the notebook's folder
        record_timing=False,  # no per-cell timestamps in the metadata
        allow_errors=False,  # only cells tagged raises-exception may fail
        on_cell_start=lambda cell, cell_index: started.append(cell_index),
    )
    with open(kernel_log, "w") if kernel_log is not None else contextlib.nullcontext() as log:
        try:
            client.execute(env={**os.environ, **KERNEL_ENV}, **({"stderr": log} if log else {}))
        except CellExecutionError:
            if failed_dir is not None:
                executed.write(executed.strip(nb, parameters=False), failed_dir / path.name)
            raise
        except Exception as e:
            if not started:
                raise KernelStartError(f"the kernel did not start: {e!r}") from e
            raise
    # Where the live-training cells' outputs were recorded (see conftest.py: nbval compares cells
    # tagged nbval-same-cpu only on a machine with the same label).
    nb.metadata["nnrandomness"] = {"executed_on": environment.float_machine()}
    # Only a changed file is written: a second build on the same machine leaves git status clean.
    return executed.write(executed.strip(nb, parameters=False), path)


def execute_all(root: Path, notebooks: list[Path], jobs: int = JOBS) -> None:
    """Execute the notebooks, `jobs` at a time (each kernel uses one thread), with progress.
    After the first failure nothing new starts; the build stops with the failure's report."""
    failed_dir, log_dir = root / "_build" / "failed", root / "_build" / "kernel-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    n, total, done = len(notebooks), time.perf_counter(), []
    stop = threading.Event()

    def run(path: Path) -> tuple[Path, bool, float]:
        if stop.is_set():
            raise CancelledError
        rel = path.relative_to(root).as_posix()
        print(f"executing {rel} ...", flush=True)
        start = time.perf_counter()
        for attempt in (1, 2):
            try:
                changed = execute_notebook(path, failed_dir=failed_dir, kernel_log=log_dir / (path.stem + ".log"))
                return path, changed, time.perf_counter() - start
            except KernelStartError:
                # Parallel kernel starts can race for a port (NOTES-ENVIRONMENT): retry once.
                if attempt == 2:
                    raise
                print(f"{rel}: the kernel did not start; retrying", flush=True)
            except BaseException:
                stop.set()
                raise
        raise AssertionError("unreachable")

    failure = None
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(run, path): path for path in notebooks}
        for future in as_completed(futures):
            path = futures[future]
            rel = path.relative_to(root).as_posix()
            try:
                _, changed, seconds = future.result()
            except CancelledError:
                continue
            except Exception as e:  # a cell error, a dead kernel, a timeout: report the first
                stop.set()
                if failure is None:
                    failure = (path, e)
                continue
            done.append(path)
            print(f"[{len(done)}/{n}] {rel}: {'updated' if changed else 'unchanged'} ({seconds:.1f} s)", flush=True)
    if failure is not None:
        path, e = failure
        rel = path.relative_to(root).as_posix()
        print(f"FAILED {rel}", flush=True)
        print(str(e)[-4000:], file=sys.stderr)
        print(
            f"{rel} was not written. Executed copy: {failed_dir.relative_to(root)}/{path.name}; "
            f"kernel log: {(log_dir / (path.stem + '.log')).relative_to(root)}",
            file=sys.stderr,
        )
        raise SystemExit(1)
    print(f"executed {n} notebook(s) in {time.perf_counter() - total:.1f} s ({jobs} at a time)", flush=True)


# ----------------------------------------------------------------------------- assets
def ensure_assets(root: Path) -> None:
    """Write _static/vega-bundle.js if it is missing or stale; check the vendored MathJax."""
    from . import charts

    path, written = charts.write_bundle(root / STATIC)
    size = path.stat().st_size / 1e6
    print(f"{path.relative_to(root)}: {'written' if written else 'up to date'} ({size:.2f} MB)", flush=True)
    check_assets(root)


def check_assets(root: Path, mathjax_path: str | None = None) -> None:
    """Raise (with the fix) if an asset the pages load is missing or does not match the versions
    in use: the vendored MathJax, and the vega bundle (which must match Altair's Vega-Lite)."""
    from . import charts

    static = root / STATIC
    if mathjax_path is not None:
        if "://" in mathjax_path or mathjax_path.startswith("//"):
            raise RuntimeError(
                f"mathjax_path {mathjax_path!r} is a URL: formulas would need the network; "
                "point it at the copy under _static/mathjax/"
            )
        if not (static / mathjax_path).is_file():
            raise RuntimeError(f"{STATIC}/{mathjax_path} is missing: see {STATIC}/{MATHJAX_DIR}/README")
    bundle = static / charts.BUNDLE_NAME
    if not bundle.is_file():
        raise RuntimeError(f"{bundle} is missing: run `python -m nnrandomness.book` (it writes it)")
    with open(bundle, encoding="utf-8") as f:
        first = f.readline().rstrip("\n")
    if first != charts.bundle_header():
        raise RuntimeError(
            f"{bundle} was made for other versions than Altair/vl-convert in use "
            f"({first!r}); run `python -m nnrandomness.book` to rewrite it"
        )


# ----------------------------------------------------------------------------- Sphinx hook
def _keep_mathjax_out(app, config) -> None:
    """Jupyter Book adds every *.js under _static/ to every page. MathJax's file must come only
    from Sphinx's mathjax extension: on pages with math, deferred, after its configuration."""
    from sphinx.errors import ExtensionError

    try:
        check_assets(Path(app.srcdir), config.mathjax_path)
    except RuntimeError as e:
        raise ExtensionError(str(e)) from None

    def name(entry):
        return entry if isinstance(entry, str) else entry[0]

    prefix = PurePosixPath(MATHJAX_DIR)
    config.html_js_files = [e for e in config.html_js_files if prefix not in PurePosixPath(name(e)).parents]


def _drop_thebe(app, pagename, templatename, context, doctree) -> None:
    """Jupyter Book always loads sphinx-thebe, whose scripts would fetch thebe from unpkg.com
    when a live-code button is pressed. The book has no such button (and no network): drop them."""

    def is_thebe(js) -> bool:
        filename = str(getattr(js, "filename", js) or "")
        body = getattr(js, "attributes", {}).get("body") or ""
        return filename.endswith("sphinx-thebe.js") or "THEBE_JS_URL" in body

    if "script_files" in context:
        context["script_files"] = [js for js in context["script_files"] if not is_thebe(js)]


class VegaLiteMime:
    """myst-nb MIME renderer (entry-point group ``myst_nb.mime_renderers``, pyproject.toml): a
    chart output (``charts.MIME_TYPE``) becomes ``charts.embed_html``, a div and a script that
    draws it with the book's offline ``_static/vega-bundle.js``. myst-nb finds renderers only
    through entry points of installed packages; :func:`setup` fails the build if it is missing."""

    # Before text/html (30) and image/svg+xml in the HTML builders: the interactive view, not
    # the static image. Other builders (LaTeX) keep their own order and take the SVG.
    mime_priority_overrides = [(b, "application/vnd.vegalite.v5+json", 5) for b in ("html", "dirhtml", "singlehtml")]

    @staticmethod
    def handle_mime(renderer, data, inline: bool):
        from docutils import nodes

        from . import charts

        if inline or data.mime_type != charts.MIME_TYPE:
            return None
        spec = data.content if isinstance(data.content, dict) else json.loads(data.string)
        options = (data.output_metadata.get(charts.MIME_TYPE) or {}).get("embed_options")
        return [nodes.raw("", charts.embed_html(spec, options), format="html", classes=["output", "nnr-vegalite"])]


def _check_mime_renderer(app, config) -> None:
    """myst-nb loads MIME renderers from entry points only: a stale installation (pyproject.toml
    changed since `pip install -e .`) would silently show the static SVG instead of the chart."""
    from importlib.metadata import entry_points

    from sphinx.errors import ExtensionError

    found = [ep for ep in entry_points(group=MIME_ENTRY_GROUP) if ep.value == f"{__name__}:VegaLiteMime"]
    if not found:
        raise ExtensionError(
            f"the chart renderer {__name__}:VegaLiteMime is not registered under the entry-point group "
            f"{MIME_ENTRY_GROUP}: reinstall the package (make setup, or pip install --no-deps -e .)"
        )


def setup(app):
    """Sphinx extension: keep the vendored MathJax out of Jupyter Book's automatic script list,
    fail early if a vendored asset is missing or stale or the chart renderer is not registered,
    and drop sphinx-thebe's CDN loader."""
    # Before Sphinx's own config-inited handlers (priority 800) convert html_js_files.
    app.connect("config-inited", _keep_mathjax_out, priority=400)
    app.connect("config-inited", _check_mime_renderer)
    app.connect("html-page-context", _drop_thebe)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


# ----------------------------------------------------------------------------- build
def build_command(root: Path, path_output: Path | None = None) -> list[str]:
    """`jupyter-book build` as the book is built (tests use it too): every Sphinx warning is an
    error, all of them are reported (--keep-going); nitpicky stays off."""
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(root), "--warningiserror", "--keep-going"]
    if path_output is not None:
        cmd += ["--path-output", str(path_output)]
    return cmd


def build(root: Path, path_output: Path | None = None) -> Path:
    """Run `jupyter-book build`. Returns the HTML folder."""
    cmd = build_command(root, path_output)
    print("$ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=root)
    if result.returncode != 0:
        raise SystemExit(f"jupyter-book build failed (exit {result.returncode}); see the messages above")
    print(f"built in {time.perf_counter() - start:.1f} s", flush=True)
    return (path_output or root) / "_build" / "html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nnrandomness.book", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the book's folder (with _toc.yml); default: .")
    parser.add_argument("--no-execute", action="store_true", help="build from the committed outputs only")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NOTEBOOK",
        help="execute only this notebook (stem or path; repeatable), then build",
    )
    parser.add_argument("--jobs", type=int, default=JOBS, help=f"notebooks executed at once (default {JOBS})")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if not (root / "_toc.yml").exists():
        parser.error(f"{root} has no _toc.yml; run from the repository root or pass --root")
    if args.no_execute and args.only:
        parser.error("--no-execute and --only exclude each other")

    start = time.perf_counter()
    ensure_assets(root)
    notebooks = chapter_notebooks(root)
    if not args.no_execute:
        execute_all(root, select(notebooks, root, args.only) if args.only else notebooks, args.jobs)
    html = build(root)
    print(f"done in {time.perf_counter() - start:.1f} s. The book is at {html / 'index.html'}")
    print(f"(or serve it: python -m http.server -d {html.relative_to(root)} 8000, then http://127.0.0.1:8000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
