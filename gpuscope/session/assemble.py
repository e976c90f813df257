"""Session traces: the steps table, every process's events tagged with their process, and the metadata.

Layout (the trace format of gpuscope.trace.model, with one more table):
  steps         one row per decode step (Python side): config, role, phase, pos_before/pos_after, n_tokens,
                t_begin_ns/t_end_ns/wall_ns, the workload's tags, and per-step engine columns (steps_with_engine)
  <event kind>  engine events of every process, with `process` ('main', 'rpc0', ...), `pid`, `config` and
                `in_step`: the step (steps.step) whose time window holds them
  meta          configs (each SplitConfig.to_dict() plus its label), model (with `synthetic`), engine build,
                processes (pid, ring status, exit), ring (the main process's ring), workload
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from gpuscope.trace.model import Trace
from gpuscope.trace.steps import JOIN_COLUMN, join_to_steps
from gpuscope.version import __version__

STEP_COLUMNS = ["step", "config", "role", "phase", "pos_before", "pos_after", "n_tokens", "n_outputs",
                "t_begin_ns", "t_end_ns", "wall_ns", "status"]


def steps_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame({column: pd.Series(dtype="int64" if column not in ("config", "role", "phase")
                                               else object) for column in STEP_COLUMNS})
    extra = [column for column in frame.columns if column not in STEP_COLUMNS]
    return frame[STEP_COLUMNS + extra]


def build_trace(step_rows: list[dict], processes: dict[str, dict], *, label: str, meta: dict,
                extra_tables: dict[str, pd.DataFrame] | None = None) -> Trace:
    """processes: {name: {"pid": int, "tables": {kind: DataFrame}, "ring": ring meta, ...}} ('main' first)."""
    steps = steps_frame(step_rows)
    per_kind: dict[str, list[pd.DataFrame]] = {}
    for name, process in processes.items():
        for kind, frame in process.get("tables", {}).items():
            frame = frame.copy()
            frame["process"] = name
            frame["pid"] = process.get("pid", 0)
            frame["config"] = label
            per_kind.setdefault(kind, []).append(frame)
    tables = {kind: pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
              for kind, frames in per_kind.items()}
    for frame in tables.values():
        frame[JOIN_COLUMN] = join_to_steps(frame, steps)
    tables["steps"] = steps_with_engine(steps, tables)
    tables.update(extra_tables or {})
    process_meta = {name: {key: value for key, value in process.items() if key != "tables"}
                    for name, process in processes.items()}
    full_meta = {"gpuscope_version": __version__, "processes": process_meta,
                 "ring": process_meta.get("main", {}).get("ring", {}), **meta}
    return Trace(meta=full_meta, tables=tables)


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
