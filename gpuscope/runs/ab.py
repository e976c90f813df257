"""`gpuscope ab`: the same workload on two engine builds, in worker processes, interleaved A B A B ... so that
machine drift (thermal state, other load, page cache) hits both builds alike; both traces and their comparison.

Each round of each build is one sweep (gpuscope.runs.sweep) of the configuration in a worker process (a process can
load only one libllama, and a crash of one build ends only its round): fill the context to each depth, decode
single tokens there.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from gpuscope.analysis.facade import Analysis
from gpuscope.compare.compare import Comparison, compare
from gpuscope.log import say
from gpuscope.runs.rounds import interleaved
from gpuscope.runs.sweep import sweep
from gpuscope.session.config import SplitConfig
from gpuscope.trace.combine import combine
from gpuscope.trace.model import Trace, save_trace


@dataclass
class AbResult:
    trace_a: Trace
    trace_b: Trace
    comparison: Comparison


def run_ab(build_a: str, build_b: str, out: str | os.PathLike, *, model: str | os.PathLike | None = None,
           config=None, depths: Sequence[int] = (0, 256), n_steps: int = 16, rounds: int = 3,
           analysis_options: dict | None = None) -> AbResult:
    """Run `rounds` rounds of A then B (B then A on odd rounds, so neither build always goes first), write
    OUT/a.trace, OUT/b.trace and OUT/compare.json, and return both traces and the comparison."""
    out = Path(out)
    config = config or SplitConfig()
    builds = {"a": build_a, "b": build_b}
    started = time.monotonic()

    def arm(name: str):
        return lambda round_index: sweep([config], model, engine=builds[name], depths=depths, n_steps=n_steps,
                                         isolate=True, progress=False, seed=round_index)

    pieces = interleaved({name: arm(name) for name in builds}, rounds, say="gpuscope ab")
    traces = {}
    for name in builds:
        trace = combine(pieces[name], {"source": "ab", "arm": name.upper(), "build": builds[name],
                                       "workload": {"name": "sweep", "depths": sorted(set(depths)),
                                                    "n_steps": n_steps, "rounds": rounds}})
        save_trace(trace, out / f"{name}.trace")
        traces[name] = trace
    options = analysis_options or {}
    comparison = compare(Analysis(traces["a"], **options), Analysis(traces["b"], **options),
                         labels=(f"A ({build_a})", f"B ({build_b})"))
    (out / "compare.json").write_text(json.dumps(comparison.to_dict(), indent=2) + "\n")
    say(f"gpuscope ab: {rounds} rounds in {time.monotonic() - started:.0f} s")
    return AbResult(trace_a=traces["a"], trace_b=traces["b"], comparison=comparison)
