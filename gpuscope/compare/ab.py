"""`gpuscope ab`: the same workload on two engine builds, in worker processes, interleaved A B A B ... so that
machine drift (thermal state, other load, page cache) hits both builds alike; both traces and their comparison.

Each round runs one isolated session per build (the session helper's worker: a process can load only one
libllama, and a crash of one build ends only its round). A round is the context sweep workload: fill the context
to each depth, decode single tokens there.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from gpuscope.analysis.facade import Analysis
from gpuscope.compare.compare import Comparison, compare
from gpuscope.errors import EngineCrashedError
from gpuscope.trace.combine import combine
from gpuscope.trace.model import Trace, save_trace


@dataclass
class AbResult:
    trace_a: Trace
    trace_b: Trace
    comparison: Comparison


def _one_round(build, model, config, depths: Sequence[int], n_steps: int, seed: int) -> Trace:
    from gpuscope.session.session import Session
    from gpuscope.session.workloads import sweep_loop

    session = Session(model, config, engine=build, isolate=True)
    try:
        session.run(sweep_loop, list(depths), n_steps, seed)
    except EngineCrashedError as exc:
        print(f"gpuscope ab: {build}: {exc}", file=sys.stderr)
    finally:
        session.close()
    return session.trace(workload={"name": "sweep", "depths": list(depths), "n_steps": n_steps})


def run_ab(build_a: str, build_b: str, out: str | os.PathLike, *, model: str | os.PathLike | None = None,
           config=None, depths: Sequence[int] = (0, 256), n_steps: int = 16, rounds: int = 3,
           analysis_options: dict | None = None) -> AbResult:
    """Run `rounds` rounds of A then B (B then A on odd rounds, so neither build always goes first), write
    OUT/a.trace, OUT/b.trace, OUT/compare.json and OUT/compare.html, and return both traces and the comparison."""
    from gpuscope.session.config import SplitConfig

    out = Path(out)
    config = config or SplitConfig()
    pieces: dict[str, list[Trace]] = {"a": [], "b": []}
    builds = {"a": build_a, "b": build_b}
    started = time.monotonic()
    for round_index in range(rounds):
        order = ("a", "b") if round_index % 2 == 0 else ("b", "a")
        for arm in order:
            print(f"gpuscope ab: round {round_index + 1}/{rounds}: {arm.upper()} ({builds[arm]})", file=sys.stderr)
            pieces[arm].append(_one_round(builds[arm], model, config, depths, n_steps, seed=round_index))
    traces = {}
    for arm in ("a", "b"):
        trace = combine(pieces[arm], {"source": "ab", "arm": arm.upper(), "build": builds[arm],
                                      "workload": {"name": "sweep", "depths": list(depths), "n_steps": n_steps,
                                                   "rounds": rounds}})
        save_trace(trace, out / f"{arm}.trace")
        traces[arm] = trace
    options = analysis_options or {}
    comparison = compare(Analysis(traces["a"], **options), Analysis(traces["b"], **options),
                         labels=(f"A ({build_a})", f"B ({build_b})"))
    (out / "compare.json").write_text(_json(comparison))
    from gpuscope.report.report import write_compare_report

    write_compare_report(comparison, out / "compare.html")
    print(f"gpuscope ab: {rounds} rounds in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return AbResult(trace_a=traces["a"], trace_b=traces["b"], comparison=comparison)


def _json(comparison: Comparison) -> str:
    import json

    return json.dumps(comparison.to_dict(), indent=2) + "\n"
