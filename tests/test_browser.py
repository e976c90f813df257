"""In a real browser: the HTML report in headless Chromium with the network cut off (plots drawn, engine names shown
as text, no script run from a name), and notebook 01 run in a real JupyterLab, its live dashboard seen updating.

Opt-in (they need Chromium and playwright, which CI does not install): GPUSCOPE_BROWSER_TESTS=1 with
`apt-get install chromium` and `pip install -e '.[browser]'`; GPUSCOPE_ARTIFACTS=DIR keeps the screenshots.
About 1 minute."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from gpuscope.report import find_browser, write_report

pytestmark = pytest.mark.skipif(os.environ.get("GPUSCOPE_BROWSER_TESTS") != "1" or find_browser() is None,
                                reason="opt-in: GPUSCOPE_BROWSER_TESTS=1 and Chrome/Chromium "
                                       "(apt-get install chromium)")

DATASETS = Path(__file__).resolve().parent.parent / "datasets"
MARKUP_NAME = "l_out<img/src=x/onerror=alert(1)>-2"


@pytest.fixture
def artifacts(tmp_path) -> Path:
    folder = Path(os.environ.get("GPUSCOPE_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=find_browser(),
                                     args=["--no-sandbox"] if os.geteuid() == 0 else [])
        yield launched
        launched.close()


def offline_page(browser):
    """A page that refuses (and notes) anything but file: URLs, and notes console errors and uncaught exceptions:
    (page, fetched, errors)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    fetched, errors = [], []
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
               else (fetched.append(route.request.url), route.abort()))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return page, fetched, errors


def test_report_in_headless_chromium_offline(browser, tmp_path, artifacts) -> None:
    report = write_report(DATASETS / "cpu" / "cpu-markup-tensor-names.trace", tmp_path / "report.html")
    page, fetched, _ = offline_page(browser)
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(report.as_uri())
    figures = report.read_text().count("Plotly.newPlot(")
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {figures}")
    assert page.locator(".js-plotly-plot").count() == figures
    assert fetched == [] and dialogs == [] and page.locator("img").count() == 0
    assert MARKUP_NAME in page.inner_text("#tables")  # the copies table shows the name as text
    # plotly's hover label of the copy matrix cell RPC0 -> RPC1 names the tensor, as text
    x, y = page.evaluate("""() => {
        const matrix = [...document.querySelectorAll('.js-plotly-plot')].find(gd => gd.data[0].type === 'heatmap');
        matrix.scrollIntoView();
        const layout = matrix._fullLayout, box = matrix.getBoundingClientRect();
        return [box.left + layout._size.l + layout.xaxis.d2p('RPC1'),
                box.top + layout._size.t + layout.yaxis.d2p('RPC0')];
    }""")
    page.mouse.move(x, y)
    hover = page.wait_for_selector(".hoverlayer .hovertext").text_content()
    assert MARKUP_NAME in hover and dialogs == []
    page.screenshot(path=str(artifacts / "report-markup.png"), full_page=True)
    assert (artifacts / "report-markup.png").stat().st_size > 100_000


def test_timeline_in_headless_chromium_zooms_to_a_finding(browser, tmp_path, artifacts) -> None:
    """A three-configuration sweep, a two-GPU trace with its kernels and one with a finding: the timeline drawn
    offline with no console error, and a click on a finding card zooms it to the finding's span."""
    from gpuscope.analysis import Analysis
    from gpuscope.doctor.rules import diagnose

    zoomed = []
    for name, trace in (("sweep", DATASETS / "cpu" / "cpu-sweep-split-configs.trace"),
                        ("two-gpus-kernels", DATASETS / "h200x2-splits" / "x2-kernels-tensor.trace"),
                        ("two-gpus-kv-on-host", DATASETS / "h200x2-splits" / "x2-sm-layer-nkvo.trace")):
        analysis = Analysis(trace)
        report = write_report(analysis, tmp_path / f"{name}.html")
        page, fetched, errors = offline_page(browser)
        page.goto(report.as_uri())
        page.wait_for_function("document.querySelector('#gpuscope-timeline .main-svg') !== null")
        lanes = page.evaluate("() => document.getElementById('gpuscope-timeline')._fullLayout.yaxis._categories")
        assert set(lanes) >= {"configuration", "depth", "steps", "splits", "syncs", "copies"}
        if "kernels" in name:
            assert {"CUDA0 kernels", "CUDA1 kernels"} <= set(lanes)
        page.locator("#timeline").screenshot(path=str(artifacts / f"timeline-{name}-whole.png"))
        finding = next((f for f in diagnose(analysis) if f.time_range_ns), None)
        if finding is not None:
            start, end = ((t - analysis.t0_ns) / 1e9 for t in finding.time_range_ns)
            page.locator(".finding[data-from] p").first.click()
            shown = page.evaluate("() => document.getElementById('gpuscope-timeline')._fullLayout.xaxis.range")
            assert shown[0] <= start < end <= shown[1] and shown[1] - shown[0] <= 1.3 * (end - start) + 0.002
            assert page.evaluate("() => document.getElementById('gpuscope-timeline').layout.shapes"
                                 ".some(s => s.name === 'finding')")
            zoomed.append(name)
        assert fetched == [] and errors == []
        page.locator("#timeline").screenshot(path=str(artifacts / f"timeline-{name}.png"))
        assert (artifacts / f"timeline-{name}.png").stat().st_size > 20_000
        page.close()
    # the kernel-collecting run's steps scatter too (measurement.noisy has a span there as well)
    assert {"sweep", "two-gpus-kv-on-host"} <= set(zoomed)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on a free port over tmp_path; yields its base URL and token."""
    port, token = _free_port(), uuid.uuid4().hex
    # fresh user settings: start the notebook's kernel without asking (JupyterLab 4 asks by default) and keep every
    # cell in the page (windowing drops cells scrolled away, the dashboard among them)
    settings = tmp_path.parent / f"{tmp_path.name}-lab-settings"
    tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True, exist_ok=True)
    tracker.write_text(json.dumps({"autoStartDefaultKernel": True, "windowingMode": "none"}))
    server = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
                               "--ip=127.0.0.1", f"--IdentityProvider.token={token}",
                               f"--ServerApp.root_dir={tmp_path}", f"--LabApp.user_settings_dir={settings}",
                               "--allow-root"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "JupyterLab did not start"
            time.sleep(0.5)
    try:
        yield url, token
    finally:
        server.terminate()
        server.wait(30)


def test_notebook_01_in_jupyterlab_shows_the_dashboard_updating(engine_build, gemma, browser, jupyterlab, tmp_path,
                                                                artifacts) -> None:
    import nbformat

    from gpuscope.runs.notebooks import notebook_path, with_parameters

    url, token = jupyterlab
    notebook = with_parameters(nbformat.read(notebook_path("01-diagnose-slow-decode"), as_version=4),
                               {"depths": [0, 256, 512, 1024], "n_steps": 24})
    nbformat.write(notebook, tmp_path / "01.ipynb")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{url}/lab/tree/01.ipynb?token={token}")
    page.wait_for_selector(".jp-Notebook", timeout=60_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", state="attached",
                           timeout=60_000)  # the kernel has started
    started = "() => [...document.querySelectorAll('.jp-InputPrompt')].some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))"
    for attempt in range(3):  # a Run All sent before the kernel's session is connected runs nothing: send it again
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        try:
            page.wait_for_function(started, timeout=20_000)
            break
        except Exception:
            assert attempt < 2, "Run All Cells never started the notebook's cells"
    # the dashboard's step-time FigureWidget, kept in view (JupyterLab does not draw cells scrolled away): count
    # its points while the sweep runs
    dashboard = page.locator(".widget-vbox", has=page.locator(".widget-button", has_text="Stop")).first
    try:
        dashboard.wait_for(state="attached", timeout=180_000)
    except Exception:
        page.screenshot(path=str(artifacts / "jupyterlab-no-dashboard.png"), full_page=True)
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        raise AssertionError("the dashboard never appeared; the notebook's error outputs:\n"
                             + "\n".join(errors.all_inner_texts())[-3000:]) from None
    dashboard.scroll_into_view_if_needed()
    points = ".widget-vbox .js-plotly-plot .scatterlayer .point"
    page.wait_for_function(f"document.querySelectorAll('{points}').length > 0", timeout=180_000)
    first = page.locator(points).count()
    page.screenshot(path=str(artifacts / "jupyterlab-dashboard-running.png"))
    page.wait_for_function(f"document.querySelectorAll('{points}').length > {first}", timeout=120_000)
    output = page.locator(".jp-OutputArea-output pre", has_text="gpuscope-summary:")
    output.wait_for(timeout=300_000)
    line = next(line for line in output.inner_text().splitlines() if line.startswith("gpuscope-summary:"))
    summary = json.loads(line.removeprefix("gpuscope-summary:"))
    final = page.locator(points).count()
    assert first < final == summary["dashboard_points"] == summary["decode_steps"] == 4 * 24
    assert summary["dashboard_refreshes_with_new_steps"] >= 3
    dashboard.scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "jupyterlab-dashboard-done.png"))


SCIENTIFIC = r"\b\d+(\.\d+)?e[+-]?\d+\b"


def test_what_a_reader_needs_is_in_the_visible_text(browser, tmp_path, artifacts) -> None:
    """A multi-configuration sweep, a two-GPU trace with its kernels and a compare of two GPU runs, as a person sees
    them: the sweep's configurations ranked at the top, one breakdown row per GPU with its busy share, no number in
    scientific notation anywhere on the page, no console error, offline; each page kept as a full-page screenshot."""
    import re

    from gpuscope.analysis import Analysis
    from gpuscope.compare import compare
    from gpuscope.report import write_compare_report

    splits = DATASETS / "h200x2-splits"
    pages = {"sweep": write_report(DATASETS / "cpu" / "cpu-sweep-split-configs.trace", tmp_path / "sweep.html"),
             "two-gpus": write_report(splits / "x2-kernels-tensor.trace", tmp_path / "two-gpus.html"),
             "compare": write_compare_report(compare(Analysis(splits / "x2-sm-layer-nkvo.trace"),
                                                         Analysis(splits / "x2-sm-layer-ts1-1.trace")),
                                             tmp_path / "compare.html")}
    for name, report in pages.items():
        page, fetched, errors = offline_page(browser)
        page.goto(report.as_uri())
        figures = report.read_text().count("Plotly.newPlot(")
        page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {figures}")
        visible = page.evaluate("() => document.body.innerText")
        svg_text = page.evaluate("() => Array.from(document.querySelectorAll('.js-plotly-plot text'))"
                                 ".map(t => t.textContent).join('\\n')")
        assert not re.search(SCIENTIFIC, visible + svg_text), re.search(SCIENTIFIC, visible + svg_text)
        assert fetched == [] and errors == [], (fetched, errors)
        if name == "sweep":
            assert "Configurations ranked by median decode time per token" in visible
        if name == "two-gpus":
            rows = [t for t in svg_text.splitlines() if t.startswith("GPU ") and "(kernels collected)" in t]
            assert len(rows) == 2 and all(": busy " in t and t.endswith("of a step (median)") for t in rows), rows
        if name == "compare":
            speed_up = r"\d+(\.\d+)?x faster: [\d.]+ -> [\d.]+ ms/token"
            assert re.search(speed_up, visible), "a speed-up said as a ratio"
        page.screenshot(path=str(artifacts / f"reader-{name}.png"), full_page=True)
        page.close()
