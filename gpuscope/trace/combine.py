"""One trace from several recorded runs (the rounds of an A/B run, or copies of one run for a scale benchmark).

Each run keeps its identity in a `run` column on every table. `seq` and step ids (the hooks' step counter, or a
session's own step numbers) are shifted so they stay unique and ordered across runs; `ts_ns` stays as recorded
(every process on a machine shares CLOCK_MONOTONIC) unless `shift_time` lays the runs end to end, as copies of one
run need.
"""
from __future__ import annotations

import pandas as pd

from gpuscope.trace.model import Trace
from gpuscope.version import __version__

# step numbers: the hooks' step counter, and the step of a session's steps table events fall in
_STEP_COLUMNS = ("step", "in_step")

def combine(traces: list[Trace], meta: dict | None = None, *, shift_time: bool = False) -> Trace:
    per_kind: dict[str, list[pd.DataFrame]] = {}
    seq_offset = 0
    step_offset = 0
    time_offset = 0
    runs = []
    for index, trace in enumerate(traces):
        tables = trace.tables
        last_seq = max((int(frame["seq"].max()) for frame in tables.values() if len(frame) and "seq" in frame),
                       default=-1)
        last_step = max((int(frame[column].max()) for frame in tables.values() for column in _STEP_COLUMNS
                         if column in frame and frame[column].notna().any()), default=0)
        first_ts = min((int(frame["ts_ns"].min()) for frame in tables.values() if len(frame) and "ts_ns" in frame),
                       default=0)
        last_ts = max((int(frame["ts_ns"].max()) for frame in tables.values() if len(frame) and "ts_ns" in frame),
                      default=0)
        shift = (time_offset - first_ts) if shift_time and index else 0
        for kind, frame in tables.items():
            frame = frame.copy()
            frame["run"] = index
            if "seq" in frame:
                frame["seq"] = frame["seq"] + seq_offset
            for column in _STEP_COLUMNS:
                if column in frame:
                    frame[column] = frame[column] + step_offset
            if shift and "ts_ns" in frame:
                frame["ts_ns"] = frame["ts_ns"] + shift
            per_kind.setdefault(kind, []).append(frame)
        runs.append({"run": index, "source": trace.meta.get("source"), "command": trace.meta.get("command"),
                     "exit": trace.meta.get("exit"), "ring": trace.meta.get("ring"), "path": str(trace.path or ""),
                     "time_shift_ns": shift})
        seq_offset += last_seq + 1
        step_offset += last_step + 1
        time_offset = last_ts + shift + 1
    tables = {kind: pd.concat(frames, ignore_index=True) for kind, frames in per_kind.items()}
    first = traces[0].meta if traces else {}
    rings = [trace.meta.get("ring") or {} for trace in traces]
    ring = {**(rings[0] if rings else {}),
            **{key: sum(int(r.get(key) or 0) for r in rings)
               for key in ("written", "read", "lost", "strings_dropped", "writer_dropped")}}
    # the combined trace crashed if any of its runs did; its exit is the first bad one
    crashed = next((r for r in rings if r.get("state") == "crashed"), None)
    if crashed:
        ring.update(state="crashed", crash_signal=crashed.get("crash_signal"),
                    crash_signal_name=crashed.get("crash_signal_name"))
    exits = [trace.meta.get("exit") or {} for trace in traces]
    bad_exit = next((e for e in exits if e.get("returncode")), exits[0] if exits else {})
    combined = {key: value for key, value in first.items() if key not in ("ring", "exit", "runs")}
    combined.update({"gpuscope_version": __version__, "ring": ring, "exit": bad_exit, "runs": runs,
                     **(meta or {})})
    return Trace(meta=combined, tables=tables)
