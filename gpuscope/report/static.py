"""Static images of reports: PNG per figure through kaleido, and a PDF of the whole report page, both rendered by
a Chrome or Chromium browser (kaleido drives one; it does not ship one). Without a browser they refuse with what
to install; the HTML report never needs one."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from gpuscope.errors import StaticExportUnavailableError

BROWSER_ENV = "GPUSCOPE_BROWSER"
_FILE_UNSAFE = re.compile(r"[^\w.-]+")
_BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
_INSTALL = ("install Chromium (Debian/Ubuntu: apt-get install chromium) or point ${env} at a Chrome/Chromium "
            "executable; kaleido can also fetch one with `plotly_get_chrome` where the internet is reachable. "
            "The HTML report itself needs no browser.").replace("${env}", BROWSER_ENV)


def find_browser() -> str | None:
    """The Chrome/Chromium executable kaleido would use: $GPUSCOPE_BROWSER, kaleido's own download, or one on the
    PATH."""
    given = os.environ.get(BROWSER_ENV)
    if given:
        return given if shutil.which(given) else None
    try:
        from choreographer.browsers.chromium import Chromium  # kaleido's browser driver
    except ImportError:  # no kaleido: the PDF export and the browser tests still take a browser on the PATH
        return next((found for name in _BROWSER_NAMES if (found := shutil.which(name))), None)
    return Chromium.find_browser(skip_local=False)


def _require_browser(what: str) -> str:
    browser = find_browser()
    if browser is None:
        raise StaticExportUnavailableError(f"{what} needs a Chrome or Chromium browser and none was found: {_INSTALL}")
    return browser


def export_png(figures: dict, folder: str | os.PathLike, *, scale: float = 2.0) -> list[Path]:
    """Each figure as FOLDER/<name>.png through kaleido; returns the files written."""
    browser = _require_browser("PNG export")
    try:
        import kaleido  # noqa: F401  (plotly's write_image needs it)
    except ImportError:
        raise StaticExportUnavailableError("PNG export needs kaleido: pip install 'gpuscope[images]' "
                                           "(or pip install kaleido)") from None
    os.environ.setdefault("BROWSER_PATH", browser)  # where choreographer looks first
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figures.items():
        # a figure of one configuration is named after it: 'memory_over_time: 2 rpc, ts 3/1'
        path = folder / (_FILE_UNSAFE.sub("-", name).strip("-") + ".png")
        fig.write_image(path, scale=scale, width=1100, height=fig.layout.height or 500)
        written.append(path)
    return written


def export_pdf(html_path: str | os.PathLike, pdf_path: str | os.PathLike, *, timeout_s: float = 120.0) -> Path:
    """Print a report page to PDF with the headless browser (the page's plots are drawn by its inlined plotly.js
    before printing)."""
    browser = _require_browser("PDF export")
    html_path, pdf_path = Path(html_path).resolve(), Path(pdf_path).resolve()
    pdf_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpuscope-browser-") as profile:
        command = [browser, "--headless", "--disable-gpu", f"--user-data-dir={profile}", "--no-pdf-header-footer",
                   "--virtual-time-budget=15000", f"--print-to-pdf={pdf_path}", html_path.as_uri()]
        if os.geteuid() == 0:  # Chromium refuses to run its sandbox as root
            command.insert(1, "--no-sandbox")
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0 or not pdf_path.is_file() or pdf_path.stat().st_size == 0:
        raise StaticExportUnavailableError(f"the browser at {browser} did not print {html_path} to PDF "
                                           f"(exit {done.returncode}): {done.stderr.strip()[-600:]}")
    return pdf_path
