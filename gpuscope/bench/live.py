"""`gpuscope bench live`: the engine's step time with the live dashboard open against without it.

It runs where the dashboard runs: a Jupyter kernel (started and driven by nbclient, which receives every widget
message the dashboard sends, as a browser would). In that kernel one session decodes the same sweep in rounds,
alternating plain and with a dashboard over it (plain first on even rounds, the dashboard first on odd ones, so
that drift hits both alike); the decode steps of each condition are compared: medians and the bootstrap interval
of their difference. Both conditions decode in a background thread, as the dashboard's workload does: a process
that decodes from two threads gets two OpenMP teams in the CPU backend, which then compete (measured: +30% step
time on 2 cores), a cost of mixing threads, not of the dashboard.
"""
from __future__ import annotations

import json

import numpy as np

from gpuscope.analysis.stats import bootstrap_median_difference
from gpuscope.extras import optional_import

_MARKER = "gpuscope-live-bench:"
_KERNEL_CODE = """
import json, threading
import gpuscope
from gpuscope.session import Session, SplitConfig
from gpuscope.session.workloads import sweep_loop

def in_a_thread(*args):
    # as dash.run does: decoding from more than one thread would make the engine's OpenMP teams compete
    worker = threading.Thread(target=session.run, args=args)
    worker.start()
    worker.join()


session = Session(None if {model!r} == "default" else {model!r}, SplitConfig.parse({config!r}), engine={engine!r})
in_a_thread(sweep_loop, [0], 4)  # warm-up: first steps pay one-time costs
refreshes, refresh_seconds = 0, 0.0
for round_index in range({rounds}):
    for mode in (("plain", "dashboard") if round_index % 2 == 0 else ("dashboard", "plain")):
        session.set_tags(mode=mode, round=round_index)
        if mode == "dashboard":
            dash = gpuscope.live(session, interval_s={interval}, title="gpuscope bench live")
            dash.run(sweep_loop, {depths!r}, {steps})
            dash.wait()
            refreshes += dash.refreshes
            refresh_seconds += dash.refresh_seconds
        else:
            in_a_thread(sweep_loop, {depths!r}, {steps})
session.close()
steps = session.trace().tables["steps"]  # with engine_ns: the step as the engine's own hooks timed it
decode = steps[(steps["phase"] == "decode") & steps["mode"].notna()]
print({marker!r} + json.dumps({{
    "plain": decode.loc[decode["mode"] == "plain", "wall_ns"].tolist(),
    "dashboard": decode.loc[decode["mode"] == "dashboard", "wall_ns"].tolist(),
    "engine_plain": decode.loc[decode["mode"] == "plain", "engine_ns"].tolist(),
    "engine_dashboard": decode.loc[decode["mode"] == "dashboard", "engine_ns"].tolist(),
    "refreshes": refreshes, "refresh_seconds": refresh_seconds}}))
"""


def measure(model: str = "default", config: str = "", engine: str | None = None, depths=(0, 256, 512),
            steps: int = 16, rounds: int = 4, interval_s: float = 0.25) -> dict:
    """Run the comparison in a fresh kernel; returns both conditions' step times and their comparison."""
    nbformat = optional_import("nbformat", extra="notebooks", needed_for="gpuscope bench live")
    nbclient = optional_import("nbclient", extra="notebooks", needed_for="gpuscope bench live")
    code = _KERNEL_CODE.format(model=model, config=config, engine=engine, rounds=rounds, interval=interval_s,
                               depths=list(depths), steps=steps, marker=_MARKER)
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nbclient.NotebookClient(notebook, timeout=3600, kernel_name="python3").execute()
    text = "".join(o.get("text", "") for o in notebook.cells[0].outputs if o.get("output_type") == "stream")
    line = next(line for line in text.splitlines() if line.startswith(_MARKER))
    data = json.loads(line[len(_MARKER):])
    plain, dashboard = np.array(data["plain"], float), np.array(data["dashboard"], float)
    diff, low, high = bootstrap_median_difference(plain, dashboard)
    return {"model": model, "config": config, "depths": list(depths), "steps_per_depth": steps, "rounds": rounds,
            "interval_s": interval_s, "steps": {"plain": len(plain), "dashboard": len(dashboard)},
            "median_ms": {"plain": float(np.median(plain) / 1e6), "dashboard": float(np.median(dashboard) / 1e6)},
            "difference_ms": float(diff / 1e6), "difference_ci_ms": [float(low / 1e6), float(high / 1e6)],
            "difference_pct": float(diff / np.median(plain) * 100),
            "refreshes": data["refreshes"],
            "ms_per_refresh": float(data["refresh_seconds"] / max(data["refreshes"], 1) * 1e3)}
