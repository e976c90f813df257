"""Sampled native CPU stacks (the `cpu_stacks` table) against decode steps: folded stacks, and CPU time per step
and category."""
from __future__ import annotations

import numpy as np
import pandas as pd


def folded(stacks: pd.DataFrame) -> pd.DataFrame:
    """Folded stacks: stack, category (its attribution), samples, time_ns, first_ns, last_ns (what a flame graph
    draws), most time first."""
    if not len(stacks):
        return pd.DataFrame(columns=["stack", "category", "samples", "time_ns", "first_ns", "last_ns"])
    out = stacks.assign(end=stacks["ts_ns"] + stacks["duration_ns"]).groupby("stack").agg(
        category=("category", "first"), samples=("samples", "sum"), time_ns=("duration_ns", "sum"),
        first_ns=("ts_ns", "min"), last_ns=("end", "max"))
    return out.reset_index().sort_values("time_ns", ascending=False, ignore_index=True)


def time_per_step(stacks: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """Per step and category: CPU time of the sampled threads inside the step window (spans clipped to it) and
    its share of the window. Only meaningful where steps are long against the clock residual and the sampling
    interval (meta['stacks']['clock'])."""
    columns = ["step", "category", "time_ns", "share"]
    if not len(stacks) or not len(steps):
        return pd.DataFrame(columns=columns)
    windows = steps.sort_values("t_begin_ns", ignore_index=True)
    begins, ends = windows["t_begin_ns"].to_numpy(np.int64), windows["t_end_ns"].to_numpy(np.int64)
    starts = stacks["ts_ns"].to_numpy(np.int64)
    stops = starts + stacks["duration_ns"].to_numpy(np.int64)
    rows = []
    # a span can cover several short steps: walk the windows each span overlaps
    first = np.searchsorted(ends, starts, side="left")
    last = np.searchsorted(begins, stops, side="left")
    categories = stacks["category"].to_numpy()
    for i in range(len(stacks)):
        for w in range(first[i], last[i]):
            overlap = min(stops[i], ends[w]) - max(starts[i], begins[w])
            if overlap > 0:
                rows.append((int(windows["step"].iat[w]), categories[i], int(overlap)))
    if not rows:
        return pd.DataFrame(columns=columns)
    out = pd.DataFrame(rows, columns=["step", "category", "time_ns"]).groupby(["step", "category"]).sum()
    out = out.reset_index()
    out["share"] = out["time_ns"] / out["step"].map(windows.set_index("step").eval("t_end_ns - t_begin_ns"))
    return out[columns]

