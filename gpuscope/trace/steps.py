"""Decode steps on the trace clock and the one join of events to them.

A step table is any frame with `step`, `t_begin_ns` and `t_end_ns`: a session's `steps` table (one row per decode,
as the session timed it) and the hook step table of gpuscope.analysis.steps (one row per `llama_decode`, with the
`tid` of the thread that decoded) have the same window columns, so every join reads either as it is.

A step runs from decode entry to its synchronized end, on CLOCK_MONOTONIC (Python's `time.monotonic_ns` on
Linux). Ring timestamps use the same clock in every process, so events of RPC server processes join the same way.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

JOIN_COLUMN = "in_step"  # the column event tables get (the engine's own `step` fields count its decode calls)


def join_to_steps(events: pd.DataFrame, steps: pd.DataFrame, *, by_thread: bool = False) -> pd.Series:
    """For each event, the `step` whose [t_begin_ns, t_end_ns] holds its `ts_ns`: an Int64 Series aligned with
    `events`, <NA> outside every step.

    by_thread: the step open on the event's own thread (`tid` in both tables), as for the hook steps: a thread
    decodes one step at a time, so its windows do not overlap, while other threads' may (another thread of the
    program, an RPC server's). Without it the steps must not overlap at all (a session decodes one batch at a time)."""
    step_ids = np.zeros(len(events), np.int64)
    found = np.zeros(len(events), bool)
    if len(events) and len(steps):
        keys = events["tid"].to_numpy(np.int64) if by_thread else np.zeros(len(events), np.int64)
        step_keys = steps["tid"].to_numpy(np.int64) if by_thread else np.zeros(len(steps), np.int64)
        times = events["ts_ns"].to_numpy(np.int64)
        by_window = np.lexsort((steps["t_begin_ns"].to_numpy(np.int64), step_keys))
        w_key = step_keys[by_window]
        begins = steps["t_begin_ns"].to_numpy(np.int64)[by_window]
        ends = steps["t_end_ns"].to_numpy(np.int64)[by_window]
        ids = steps["step"].to_numpy(np.int64)[by_window]
        # events and windows sorted by key: one searchsorted per key, over contiguous slices
        by_event = np.argsort(keys, kind="stable")
        e_key = keys[by_event]
        key_values, w_first = np.unique(w_key, return_index=True)
        w_last = np.append(w_first[1:], len(w_key))
        e_first = np.searchsorted(e_key, key_values, side="left")
        e_last = np.searchsorted(e_key, key_values, side="right")
        for w0, w1, e0, e1 in zip(w_first, w_last, e_first, e_last):
            if e0 == e1:
                continue
            rows = by_event[e0:e1]
            index = np.searchsorted(begins[w0:w1], times[rows], side="right") - 1
            safe = np.maximum(index, 0) + w0
            found[rows] = (index >= 0) & (times[rows] <= ends[safe])
            step_ids[rows] = ids[safe]
    return pd.Series(pd.arrays.IntegerArray(step_ids, ~found), index=events.index, name=JOIN_COLUMN)


def inside_steps(events: pd.DataFrame, steps: pd.DataFrame, *, by_thread: bool = False) -> pd.DataFrame:
    """The events that happened inside a step (join_to_steps), with the step's id as an int64 `in_step`."""
    in_step = join_to_steps(events, steps, by_thread=by_thread)
    inside = in_step.notna().to_numpy()
    return events[inside].assign(**{JOIN_COLUMN: in_step[inside].to_numpy(np.int64)})
