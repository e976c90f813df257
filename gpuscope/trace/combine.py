"""One trace from several: the configurations of a sweep (a session's trace each), the rounds of an A/B run, or
copies of one run for a scale benchmark.

Each run keeps its identity in a `run` column on every table and its own metadata under meta['runs']. `seq` and
step ids (the hooks' step counter, a session's own step numbers, and `in_step`, which points at them) are shifted
so they stay unique and ordered across runs: runs made in separate processes (an isolated sweep's workers, the
rounds of an A/B run) each count them from zero. `ts_ns` stays as recorded (every process on a machine shares
CLOCK_MONOTONIC) unless `shift_time` lays the runs end to end, as copies of one run need.
"""
from __future__ import annotations

import pandas as pd

from gpuscope.trace.model import Trace
from gpuscope.version import __version__

# step numbers: the hooks' step counter, a session's step ids (steps.step, captures.step) and the join to them
_STEP_COLUMNS = ("step", "in_step")
# what a run's metadata says of that run alone: kept in its meta['runs'] entry; where the combined trace has the key
# too, it is made from every run's
_OF_ONE_RUN = ("runs", "configs", "processes", "devices", "models", "ring", "exit", "crashed")
_RING_COUNTS = ("written", "read", "lost", "strings_dropped", "writer_dropped")


def combine(traces: list[Trace], meta: dict | None = None, *, shift_time: bool = False) -> Trace:
    """The runs' tables concatenated and renumbered; the metadata of the first run for what all runs share (the
    model, the engine, the command), every run's configurations, their rings' accounting together, and `meta`."""
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
        runs.append({**{key: value for key, value in trace.meta.items() if key != "configs"}, "run": index,
                     "path": str(trace.path or ""), "time_shift_ns": shift})
        seq_offset += last_seq + 1
        step_offset += last_step + 1
        time_offset = last_ts + shift + 1
    tables = {kind: pd.concat(frames, ignore_index=True) for kind, frames in per_kind.items()}
    first = traces[0].meta if traces else {}
    exits = [trace.meta.get("exit") or {} for trace in traces]
    configs: list[dict] = []
    for config in (config for trace in traces for config in trace.meta.get("configs") or []):
        if config not in configs:  # the rounds of one configuration list it once
            configs.append(config)
    combined = {key: value for key, value in first.items() if key not in _OF_ONE_RUN}
    combined.update({
        "gpuscope_version": __version__, "configs": configs,
        "ring": _ring([trace.meta.get("ring") or {} for trace in traces]),
        # the combined trace crashed if any of its runs did; its exit is the first bad one
        "exit": next((e for e in exits if e.get("returncode")), exits[0] if exits else {}),
        "crashed": any(bool(trace.meta.get("crashed")) for trace in traces), "runs": runs, **(meta or {})})
    return Trace(meta=combined, tables=tables)


def _ring(rings: list[dict]) -> dict:
    """The first ring's description with every ring's counts summed, crashed if any ring crashed. A ring that
    several runs read counts once, at its last reading: the sessions of an in-process sweep share their process's
    ring, and its counts only grow."""
    distinct = list({ring.get("path") or index: ring for index, ring in enumerate(rings)}.values())
    ring = {**(rings[0] if rings else {}),
            **{key: sum(int(r.get(key) or 0) for r in distinct) for key in _RING_COUNTS}}
    crashed = next((r for r in rings if r.get("state") == "crashed"), None)
    if crashed:
        ring.update(state="crashed", crash_signal=crashed.get("crash_signal"),
                    crash_signal_name=crashed.get("crash_signal_name"))
    return ring
