"""Trace health: can the trace be trusted and complete? Events lost to overwrite, names the writer could not
intern, the engine's fate (a crash and the step it died in), event kinds this reader does not know."""
from __future__ import annotations

import signal

import pandas as pd


def _signal_name(value) -> str | None:
    if not value:
        return None
    if isinstance(value, str):
        return value
    try:
        return signal.Signals(int(value)).name
    except ValueError:
        return f"signal {value}"


def health(meta: dict, steps: pd.DataFrame) -> dict:
    """A flat dict of the trace's health figures."""
    ring = meta.get("ring") or {}
    exit_info = meta.get("exit") or {}
    written = int(ring.get("written") or 0)
    lost = int(ring.get("lost") or 0)
    # a program that died of the stop signal `gpuscope record` forwarded (or of its SIGKILL after a second one)
    # was interrupted, not crashed; the writer's crash handler marks the ring of a real crash
    interrupted = meta.get("interrupted") or {}
    stops = {interrupted.get("signal"), int(signal.SIGKILL) if interrupted.get("killed") else None} - {None}
    died_of = int(exit_info.get("signal") or 0)
    crashed = ring.get("state") == "crashed" or (died_of != 0 and died_of not in stops)
    in_flight = steps[~steps["complete"] & steps["status"].isna()] if len(steps) else steps
    return {
        "ring_opened": bool(ring.get("opened", bool(ring))),
        "state": ring.get("state"),
        "written": written,
        "read": int(ring.get("read") or 0),
        "lost": lost,
        "lost_share": lost / written if written else 0.0,
        "strings_dropped": int(ring.get("strings_dropped") or 0),
        "writer_dropped": int(ring.get("writer_dropped") or 0),
        "unknown_kinds": ring.get("unknown_kinds") or {},
        "crashed": bool(crashed),
        "interrupted": interrupted.get("signal_name"),
        "crash_signal": _signal_name(ring.get("crash_signal") or exit_info.get("signal")),
        "exit": exit_info.get("how"),
        "steps": int(len(steps)),
        "steps_in_flight": [int(s) for s in in_flight["step"]] if len(in_flight) else [],
        "failed_steps": int(((steps["status"].fillna(0) != 0)).sum()) if len(steps) else 0,
        "collectors": _collectors(meta),
    }


def _collectors(meta: dict) -> dict:
    """What each collector that ran cost and how well its clock was aligned, per configuration label."""
    out = {}
    for label, entry in (meta.get("kernels") or {}).items():
        out[f"kernels:{label}"] = {"cost": entry.get("cost"), "clock_residual_ns": (entry.get("clock") or {})
                                   .get("residual_ns"), "warning": entry.get("warning")}
    for label, entry in (meta.get("stacks") or {}).items():
        out[f"stacks:{label}"] = {"clock_residual_ns": (entry.get("clock") or {}).get("residual_ns"),
                                  "rate": entry.get("rate")}
    return out


def last_events(tables: dict[str, pd.DataFrame], count: int = 12) -> pd.DataFrame:
    """The last events of the trace across kinds (what the engine did right before it stopped). Tables without
    the events' ticket (a session's `steps`, the collectors') are not events of the ring."""
    parts = [frame[["seq", "ts_ns"]].assign(kind=kind, row=range(len(frame))).nlargest(count, "seq")
             for kind, frame in tables.items() if len(frame) and {"seq", "ts_ns"} <= set(frame.columns)]
    if not parts:
        return pd.DataFrame(columns=["seq", "ts_ns", "kind", "detail"])
    last = pd.concat(parts).nlargest(count, "seq").sort_values("seq")
    details = []
    for row in last.itertuples():
        record = tables[row.kind].iloc[row.row]
        fields = [f"{k}={record[k]}" for k in record.index if k not in ("seq", "ts_ns", "tid")]
        details.append(", ".join(fields))
    return last[["seq", "ts_ns", "kind"]].assign(detail=details).reset_index(drop=True)
