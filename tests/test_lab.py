"""A committed chapter in a real JupyterLab, in headless Chromium, offline.

The test starts the JupyterLab of requirements.txt on 127.0.0.1 (no token, a free port, its own
settings, workspaces and runtime folders under tmp_path) on a copy of a chapter, and opens it in
headless Chromium driven over the DevTools protocol (no browser download; Debian's chromium).
Without re-running anything it checks what a student sees: every chart of the chapter drawn by
Lab's built-in Vega renderer (an ``svg`` in the output), a tooltip on hovering a mark, the figure
captions and the glued numbers shown as text and no raw ``{glue`` role in any output, and no request leaving 127.0.0.1.
Then it runs all cells in Lab's kernel: the charts are drawn again, with the same numbers.
Screenshots go to ``_build/screenshots/`` (git-ignored).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
import websocket

from nnrandomness import charts

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = "20_topline.ipynb"  # an analysis chapter: three glued figures and glued numbers
SCREENSHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = "chromium"
WAIT_S = 45  # for Lab to start, and for the page to draw its charts (2 busy cores)
# Notebook settings: every cell attached to the DOM (the default windowing may leave cells out
# of view detached), and no news or update checks (they would go to the network).
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout: float = WAIT_S, interval: float = 0.25):
    """Poll check() until it returns something truthy; fail naming what did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on a copy of the chapter; yields its base URL."""
    # The repository's layout, so that a re-run finds the run store (../data/runs): a copy of the
    # chapter (Lab may autosave: never the committed file) and the data folder linked (only read).
    root = tmp_path / "root"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / "notebooks" / CHAPTER, root / "notebooks" / CHAPTER)
    (root / "data").symlink_to(ROOT / "data", target_is_directory=True)
    settings = tmp_path / "settings"
    for name, values in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values), encoding="utf-8")
    port = free_port()
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
    }
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.open_browser=False",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--IdentityProvider.token=",
        "--ServerApp.password=",
        "--ServerApp.disable_check_xsrf=True",
        "--ServerApp.allow_root=True",  # CI runs as root
        "--LabApp.extension_manager=readonly",  # no PyPI queries
        f"--ServerApp.root_dir={root}",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        f"--LabApp.user_settings_dir={settings}",
        f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: the test runs all cells with it
    ]
    log = open(tmp_path / "lab.log", "w")
    server = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("JupyterLab to answer", lambda: server.poll() is not None or http_ok(f"{url}/api/status"))
        if server.poll() is not None:
            pytest.fail(f"JupyterLab exited ({server.returncode}):\n{(tmp_path / 'lab.log').read_text()[-3000:]}")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


class Page:
    """One headless Chromium tab, driven over the DevTools protocol; records every request."""

    def __init__(self, tmp_path: Path):
        if shutil.which(CHROMIUM) is None:
            pytest.fail("chromium is not installed: run `make browser` (apt-get install chromium, as root)")
        profile = tmp_path / "chromium-profile"
        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1400,1000",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        wait_for("chromium's DevTools port", lambda: port_file.is_file() and port_file.read_text().strip())
        port = int(port_file.read_text().splitlines()[0])
        targets = wait_for(
            "a chromium tab",
            lambda: [
                t
                for t in json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
                if t["type"] == "page"
            ],
        )
        self.ws = websocket.create_connection(targets[0]["webSocketDebuggerUrl"], timeout=WAIT_S)
        self.next_id = 0
        self.requests: list[str] = []
        self.errors: list[str] = []
        for domain in ("Page", "Network", "Runtime"):
            self.call(f"{domain}.enable")

    def _event(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(str(details.get("exception", {}).get("description") or details.get("text")))

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._event(message)

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        self.ws.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture
def page(tmp_path):
    page = Page(tmp_path)
    yield page
    page.close()


VEGA_OUTPUTS = "document.querySelectorAll('.jp-RenderedVegaLite')"
# Visible marks with a tooltip: Vega's SVG renderer draws each mark item as a path (or rect...)
# inside a group of class mark-<type>; hovering one makes vega-tooltip show #vg-tooltip-element.
MARKS = (
    "Array.from(document.querySelectorAll('.jp-RenderedVegaLite svg .mark-symbol path, "
    ".jp-RenderedVegaLite svg .mark-rect path, .jp-RenderedVegaLite svg .mark-bar path'))"
)


def chart_outputs(path: Path) -> int:
    nb = nbformat.read(str(path), as_version=4)
    return sum(charts.MIME_TYPE in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.slow  # about 45 s: Lab and chromium start, the chapter runs once in the kernel
def test_chapter_charts_draw_in_jupyterlab(lab, page):
    expected = chart_outputs(ROOT / "notebooks" / CHAPTER)
    assert expected >= 3, f"{CHAPTER} should hold its three figures as chart outputs, found {expected}"
    page.call("Page.navigate", url=f"{lab}/lab/tree/notebooks/{CHAPTER}")
    drawn = wait_for(
        f"{expected} charts drawn by Lab's Vega renderer",
        lambda: (
            n
            if (n := page.js(f"Array.from({VEGA_OUTPUTS}).filter(e => e.querySelector('svg')).length")) >= expected
            else 0
        ),
    )
    assert drawn == expected

    # Hover marks until one shows a tooltip (the first mark may sit under another, or lack one).
    page.js(f"{VEGA_OUTPUTS}[0].scrollIntoView({{block: 'center'}})")
    shown = ""
    for index in range(min(30, page.js(f"{MARKS}.length"))):
        box = page.js(
            f"(() => {{ const m = {MARKS}[{index}]; m.scrollIntoView({{block: 'center'}});"
            " const r = m.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2, r.width]; })()"
        )
        if box[2] == 0:
            continue
        page.call("Input.dispatchMouseEvent", type="mouseMoved", x=box[0], y=box[1])
        time.sleep(0.2)
        shown = page.js(
            "(() => { const t = document.getElementById('vg-tooltip-element');"
            " return t && t.classList.contains('visible') ? t.innerText : ''; })()"
        )
        if shown:
            break
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(SCREENSHOTS / f"lab-{Path(CHAPTER).stem}.png")
    assert shown, "hovering the charts' marks showed no tooltip"

    # The outputs a student reads instead of the prose's glue roles: captions, no raw roles.
    outputs = page.js("Array.from(document.querySelectorAll('.jp-OutputArea-output')).map(e => e.innerText)")
    raw = [text[:120] for text in outputs if "{glue" in text]
    assert not raw, f"raw glue roles shown in outputs: {raw}"
    captions = [text for text in outputs if text.startswith("fig-topline-")]
    assert len(captions) == expected, f"each figure's caption shown under it in Lab: {captions}"
    # The prose's {glue:text}`algo_churn` is a bare key in Lab: its value is in a table beside it.
    numbers = [text for text in outputs if text.startswith("Numbers the prose quotes")]
    assert numbers and "algo_churn" in numbers[0], f"the glued numbers are not shown in Lab: {numbers[:1]}"

    # Run All in the page's kernel: the charts are drawn again, and the numbers are the same.
    panel = "Array.from(window.jupyterapp.shell.widgets('main')).find(w => w.sessionContext)"
    wait_for("the kernel", lambda: page.js(f"{panel}?.sessionContext.session?.kernel?.status") == "idle", timeout=90)
    page.js(f"{VEGA_OUTPUTS}.forEach(e => e.classList.add('nnr-before-rerun'))")
    page.js(f"window.jupyterapp.shell.activateById({panel}.id)")
    page.js("window.jupyterapp.commands.execute('notebook:run-all-cells').then(() => true)")
    wait_for(
        "Run All to finish",
        lambda: page.js(
            f"{panel}.sessionContext.session.kernel.status === 'idle' && "
            "!Array.from(document.querySelectorAll('.jp-InputPrompt')).some(p => p.innerText.includes('*'))"
        ),
        timeout=120,
        interval=1,
    )
    redrawn = wait_for(
        "the charts drawn again after Run All",
        lambda: (
            n
            if (
                n := page.js(
                    f"Array.from({VEGA_OUTPUTS}).filter(e => !e.classList.contains('nnr-before-rerun')"
                    " && e.querySelector('svg')).length"
                )
            )
            >= expected
            else 0
        ),
    )
    assert redrawn == expected
    after = page.js("Array.from(document.querySelectorAll('.jp-OutputArea-output')).map(e => e.innerText)")
    assert [t for t in after if t.startswith("Numbers the prose quotes")] == numbers, "Run All changed the numbers"
    page.screenshot(SCREENSHOTS / f"lab-{Path(CHAPTER).stem}-rerun.png")

    remote = sorted({u for u in page.requests if not u.startswith((lab, "data:", "blob:", "about:"))})
    assert not remote, f"JupyterLab's page requested something outside 127.0.0.1: {remote}"
    vega_errors = [e for e in page.errors if "vega" in e.lower()]
    assert not vega_errors, f"uncaught errors while drawing charts: {vega_errors}"
