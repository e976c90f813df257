"""When things happened: the trace's time origin (the one zero of every time axis that shows the trace), the spans
of each configuration's run and of each depth of context in it, and the span of the trace that a set of steps or
events covers (what a finding points at)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from gpuscope.analysis.verdict import decode_steps, depths

BAND_COLUMNS = ["level", "config", "depth", "start_ns", "end_ns", "steps", "first_step", "last_step"]


def time_origin(tables: dict[str, pd.DataFrame], steps: pd.DataFrame | None = None) -> int:
    """The trace's first timestamp (its own clock, CLOCK_MONOTONIC ns) over every table of events and the steps'
    begins; 0 for a trace with no timed event. Every time axis counts seconds from here."""
    starts = [int(frame["ts_ns"].min()) for frame in tables.values() if "ts_ns" in frame.columns and len(frame)]
    if steps is not None and len(steps):
        starts.append(int(steps["t_begin_ns"].min()))
    return min(starts, default=0)


def _windows(steps: pd.DataFrame) -> pd.DataFrame:
    """Steps in time order with an end for each (a step that never returned ends where it began)."""
    ordered = steps.sort_values("t_begin_ns", kind="stable")
    return ordered.assign(end_ns=ordered["t_end_ns"].fillna(ordered["t_begin_ns"]).astype(np.int64))


def step_depths(steps: pd.DataFrame) -> pd.Series:
    """The depth of context each step belongs to, as the configurations side by side count it: a decode step's
    own (gpuscope.analysis.verdict.depths); a fill or prefill step takes the depth of the next decode step of its
    configuration (it fills the context to that depth), the last ones that of the decode step before them."""
    decode = decode_steps(steps)
    known = decode.groupby("config", sort=False)["context"].transform(depths) if len(decode) else \
        pd.Series(dtype="Int64")
    ordered = _windows(steps)
    by_time = known.reindex(ordered.index).astype("Float64").groupby(ordered["config"], sort=False)
    filled = by_time.bfill().groupby(ordered["config"], sort=False).ffill()
    return filled.astype("Int64").reindex(steps.index)


def bands(steps: pd.DataFrame) -> pd.DataFrame:
    """The spans of the trace by configuration and by depth: one `configuration` row per run of consecutive steps of
    one configuration (a sweep runs each once; interleaved rounds come back to it), one `depth` row per run of
    consecutive steps of one depth within it: start_ns / end_ns (trace clock), steps, first and last step."""
    if not len(steps):
        return pd.DataFrame(columns=BAND_COLUMNS)
    ordered = _windows(steps).assign(depth=step_depths(steps))
    config = ordered["config"].astype(str)
    run = (config != config.shift()).cumsum()
    depth_run = (run != run.shift()) | (ordered["depth"].ne(ordered["depth"].shift()).fillna(True))
    parts = []
    for level, keys in (("configuration", run), ("depth", depth_run.cumsum())):
        grouped = ordered.groupby(keys.to_numpy(), sort=True)
        part = grouped.agg(config=("config", "first"), depth=("depth", "first"), start_ns=("t_begin_ns", "min"),
                           end_ns=("end_ns", "max"), steps=("step", "size"), first_step=("step", "first"),
                           last_step=("step", "last")).reset_index(drop=True)
        if level == "configuration":
            part["depth"] = pd.array([pd.NA] * len(part), dtype="Int64")
        parts.append(part.assign(level=level))
    return pd.concat(parts, ignore_index=True)[BAND_COLUMNS]


def span_of(steps: pd.DataFrame, rows: pd.DataFrame | None = None, config: str | None = None) -> tuple | None:
    """The span of the trace (start_ns, end_ns) some rows refer to: the windows of the steps they name (a `step`
    column), else the times of their events (`ts_ns`, from `ts_ns - duration_ns` where events carry how long they
    took up to ts_ns), else the steps of `config`; None when none of these says where."""
    windows = _windows(steps).set_index("step") if len(steps) else pd.DataFrame()
    if rows is not None and len(rows):
        if "step" in rows.columns and len(windows):
            named = windows.reindex(pd.unique(rows["step"].dropna())).dropna(subset=["t_begin_ns"])
            if len(named):
                return int(named["t_begin_ns"].min()), int(named["end_ns"].max())
        if "ts_ns" in rows.columns and rows["ts_ns"].notna().any():
            ends = rows["ts_ns"].dropna().astype(np.int64)
            took = rows["duration_ns"].reindex(ends.index).fillna(0).astype(np.int64) \
                if "duration_ns" in rows.columns else 0
            return int((ends - took).min()), int(ends.max())
    if config is not None and len(windows):
        mine = windows[windows["config"].astype(str) == str(config)]
        if len(mine):
            return int(mine["t_begin_ns"].min()), int(mine["end_ns"].max())
    return None
