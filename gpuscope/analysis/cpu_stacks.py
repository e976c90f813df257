"""Sampled native CPU stacks (the `cpu_stacks` table) against decode steps: folded stacks, CPU time per step
and category, and the step each span started in."""
from __future__ import annotations

import numpy as np
import pandas as pd

from gpuscope.trace.steps import join_to_steps, step_windows


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
    windows = step_windows(steps)
    if not len(stacks) or not len(windows):
        return pd.DataFrame(columns=columns)
    begins, ends = windows["begin_ns"].to_numpy(np.int64), windows["end_ns"].to_numpy(np.int64)
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
    out["share"] = out["time_ns"] / out["step"].map(windows.set_index("step").eval("end_ns - begin_ns"))
    return out[columns]


def stacks_in_steps(stacks: pd.DataFrame, steps: pd.DataFrame) -> pd.Series:
    """The step whose window holds each span's start (<NA> outside every step), as the `in_step` column."""
    return join_to_steps(stacks, steps)
