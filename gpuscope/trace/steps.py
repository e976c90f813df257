"""Decode steps on the trace clock and the join of events to them.

A step runs from decode entry to its synchronized end, on CLOCK_MONOTONIC (Python's `time.monotonic_ns` on
Linux). Ring timestamps use the same clock in every process, so events of RPC server processes join the same way.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

JOIN_COLUMN = "in_step"  # the column event tables get (the engine's own `step` fields count its decode calls)


def join_to_steps(events: pd.DataFrame, steps: pd.DataFrame) -> pd.Series:
    """For each event, the `step` whose [t_begin_ns, t_end_ns] holds its timestamp; <NA> outside every step.

    Steps never overlap (one session decodes one batch at a time)."""
    if events.empty or steps.empty:
        return pd.Series(pd.array([pd.NA] * len(events), dtype="Int64"), index=events.index, name=JOIN_COLUMN)
    ordered = steps.sort_values("t_begin_ns")
    begins = ordered["t_begin_ns"].to_numpy(np.int64)
    ends = ordered["t_end_ns"].to_numpy(np.int64)
    ts = events["ts_ns"].to_numpy(np.int64)
    candidate = np.searchsorted(begins, ts, side="right") - 1
    inside = (candidate >= 0) & (ts <= ends[np.clip(candidate, 0, None)])
    step_ids = ordered["step"].to_numpy(np.int64)[np.clip(candidate, 0, None)]
    result = pd.array(np.where(inside, step_ids, 0), dtype="Int64")
    result[~inside] = pd.NA
    return pd.Series(result, index=events.index, name=JOIN_COLUMN)


def step_windows(steps: pd.DataFrame) -> pd.DataFrame:
    """step, begin_ns, end_ns from a session's `steps` table (t_begin_ns/t_end_ns) or the analysis step table
    (begin_ns/end_ns)."""
    if {"t_begin_ns", "t_end_ns"} <= set(steps.columns):
        begin, end = "t_begin_ns", "t_end_ns"
    elif {"begin_ns", "end_ns"} <= set(steps.columns):
        begin, end = "begin_ns", "end_ns"
    else:
        raise KeyError("a step table needs t_begin_ns/t_end_ns (session steps) or begin_ns/end_ns (step_table)")
    windows = pd.DataFrame({"step": steps["step"].to_numpy(np.int64), "begin_ns": steps[begin].to_numpy(np.int64),
                            "end_ns": steps[end].to_numpy(np.int64)})
    return windows.sort_values("begin_ns", ignore_index=True)
