"""`gpuscope demo`, the README's first command, end to end with small depths: engine (cached), default model,
sweep, doctor, report, notebooks. About 15 s with the engine built."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from gpuscope.runs.notebooks import NOTEBOOKS


def test_demo_writes_a_report_it_names_and_the_notebooks(engine_build, gemma, tmp_path) -> None:
    done = subprocess.run([sys.executable, "-m", "gpuscope.cli", "demo", "--out", str(tmp_path / "demo"),
                           "--depths", "0,64", "--steps", "6"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = Path(re.search(r"^report: (.+)$", done.stdout, re.M).group(1))
    assert report == tmp_path / "demo" / "demo-report.html" and report.stat().st_size > 1_000_000
    page = report.read_text()
    assert "gpuscope demo: default model on this CPU" in page and "the CPU engine" in done.stderr and "Gemma 3 270m" in page
    steps, complete = map(int, re.search(r"^steps: (\d+) \((\d+) complete\)$", done.stdout, re.M).groups())
    assert steps == complete >= 12  # 2 depths x 6 decode steps, plus the fill
    assert f"jupyter lab {tmp_path / 'demo' / 'notebooks'}" in done.stdout
    assert sorted(p.stem for p in (tmp_path / "demo" / "notebooks").glob("*.ipynb")) == sorted(NOTEBOOKS)
    for stage in ("1/5", "2/5", "3/5", "4/5", "5/5"):
        assert f"gpuscope demo: {stage}" in done.stderr
