"""Joining Python-side step records with the engine's events by time (pure functions: DataFrames in and out).

A step runs from decode entry to its synchronized end, on CLOCK_MONOTONIC (Python's `time.monotonic_ns` on
Linux). Ring timestamps use the same clock in every process, so events of RPC server processes join the same way.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


JOIN_COLUMN = "in_step"  # the column event tables get (the engine's own `step` fields count its decode calls)


def step_of_events(events: pd.DataFrame, steps: pd.DataFrame) -> pd.Series:
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


def steps_with_engine(steps: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """`steps` plus what the engine recorded during each step, from event tables that carry the join column:
    `n_<kind>` (events of each kind, all processes), `engine_ns` (the engine's own decode-to-synchronized
    time), `graph_reused` (every ubatch reused the previous graph), `sync_ns` (time spent in synchronizations)."""
    out = steps.copy()
    for kind, frame in sorted(tables.items()):
        if JOIN_COLUMN not in frame.columns:
            continue
        counts = frame[JOIN_COLUMN].dropna().astype(np.int64).value_counts()
        out[f"n_{kind}"] = out["step"].map(counts).fillna(0).astype(np.int64)
    main = {kind: frame[frame["process"] == "main"] if "process" in frame.columns else frame
            for kind, frame in tables.items() if JOIN_COLUMN in frame.columns}
    if "decode_synced" in main:
        out["engine_ns"] = out["step"].map(main["decode_synced"].groupby(JOIN_COLUMN)["duration_ns"].sum())
    if "ubatch" in main:
        out["graph_reused"] = out["step"].map(main["ubatch"].groupby(JOIN_COLUMN)["graph_reused"].min() > 0)
    if "sync" in main:
        out["sync_ns"] = out["step"].map(main["sync"].groupby(JOIN_COLUMN)["duration_ns"].sum()).fillna(0)
    return out
