"""`gpuscope bench analysis`: load and doctor time against event count (1M, 10M by default).

The events are real: a trace recorded from a patched engine (given with --trace, or recorded now from the default
CPU build decoding a tiny synthetic model with llama-bench), copied end to end until the wanted count is reached,
each copy shifted in time, sequence and step numbers (gpuscope.trace.combine). Each size is measured in a fresh
process so that its peak memory is its own.
"""
from __future__ import annotations

import multiprocessing
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpuscope.analysis.facade import Analysis
from gpuscope.doctor.rules import diagnose
from gpuscope.engine.build import find_build
from gpuscope.errors import GpuscopeError
from gpuscope.models.synth import synth_model
from gpuscope.runs.record import record
from gpuscope.trace.combine import combine
from gpuscope.trace.model import load_trace, save_trace
from gpuscope import units


def _events(trace) -> int:
    return sum(len(frame) for kind, frame in trace.tables.items() if kind != "steps")


def record_source(folder: Path, engine: str | None) -> Path:
    """A real trace to scale: llama-bench decoding a tiny synthetic model on the CPU build."""
    build = find_build(engine)
    model = synth_model("tiny")
    out = folder / "source.trace"
    command = [str(build.bin_dir / "llama-bench"), "-m", str(model), "-p", "16", "-n", "256", "-r", "2",
               "-t", "2", "-o", "csv"]
    record(command, out, quiet=True, stdout=subprocess.DEVNULL)
    return out


def scale(source, target_events: int):
    """Copies of `source` end to end until they hold at least `target_events` events."""
    per_copy = _events(source)
    if per_copy == 0:
        raise GpuscopeError(f"{source.path}: the source trace has no events to scale")
    copies = -(-target_events // per_copy)
    return combine([source] * copies, {"source": "bench-analysis", "scaled_from": str(source.path),
                                       "copies": copies}, shift_time=True), copies


def _measure(trace_path: str, queue) -> None:
    start = time.perf_counter()
    trace = load_trace(trace_path)
    loaded = time.perf_counter()
    analysis = Analysis(trace)
    findings = diagnose(analysis)
    diagnosed = time.perf_counter()
    budget = analysis.budget_summary  # the per-step budget: the heaviest analysis, which few rules need
    done = time.perf_counter()
    queue.put({"load_s": loaded - start, "doctor_s": diagnosed - loaded, "budget_s": done - diagnosed,
               "steps": len(analysis.steps), "findings": [f.id for f in findings], "budget_rows": len(budget),
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})  # KiB: in MiB


def measure(trace_path: Path) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure, args=(str(trace_path), queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def run(sizes: list[int], source_path: Path | None, engine: str | None, keep: Path | None) -> list[dict]:
    scratch = Path(tempfile.mkdtemp(prefix="gpuscope-bench-analysis-"))
    try:
        if source_path is None:
            print("gpuscope bench analysis: recording a source trace (llama-bench, tiny synthetic model, CPU)",
                  file=sys.stderr)
            source_path = record_source(scratch, engine)
        source = load_trace(source_path)
        print(f"source: {source_path} ({_events(source)} real recorded events, {source.meta.get('command')})")
        results = []
        for size in sizes:
            scaled, copies = scale(source, size)
            path = save_trace(scaled, (keep or scratch) / f"scaled-{size}.trace")
            figures = measure(path)
            figures.update(events=_events(scaled), copies=copies, target=size)
            results.append(figures)
            print(f"{figures['events']:>11,} events ({copies} shifted copies of the source): "
                  f"load {figures['load_s']:.2f} s, doctor {figures['doctor_s']:.2f} s, "
                  f"step budget {figures['budget_s']:.2f} s, "
                  f"{figures['steps']:,} steps, peak RSS {units.size(figures['peak_rss_mb'] * units.MIB)}, "
                  f"findings {figures['findings'] or 'none'}")
            del scaled
        return results
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
