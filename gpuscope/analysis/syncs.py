"""Synchronizations: per step, count and time by reason and backend, and the eval callback's share.

With an eval callback the scheduler computes each split in graph views and synchronizes after every view, so
the count of eval-callback syncs per step says how finely the graph was cut (`views_per_split`)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from gpuscope.analysis.columns import text
from gpuscope.trace.steps import JOIN_COLUMN, inside_steps


def per_step(steps: pd.DataFrame, sync: pd.DataFrame) -> pd.DataFrame:
    """One row per (step, reason, backend) with syncs: count and total time."""
    columns = ["step", "reason", "backend", "count", "time_ns"]
    if not len(sync):
        return pd.DataFrame(columns=columns)
    # names made categories over the whole table, so that their order does not depend on the step windows
    sync = inside_steps(sync.assign(reason=text(sync["reason"]), backend=text(sync["backend"])), steps,
                        by_thread=True)
    frame = pd.DataFrame({"step": sync[JOIN_COLUMN].to_numpy(), "reason": sync["reason"].array,
                          "backend": sync["backend"].array, "duration_ns": sync["duration_ns"].to_numpy(np.int64)})
    out = frame.groupby(["step", "reason", "backend"], sort=True, observed=True).agg(count=("duration_ns", "size"),
                                                                      time_ns=("duration_ns", "sum"))
    return out.reset_index()[columns]


def summary(steps: pd.DataFrame, sync_per_step: pd.DataFrame) -> pd.DataFrame:
    """Per (reason, backend): syncs per step and time per step, and the share of the steps' wall time."""
    columns = ["reason", "backend", "syncs_per_step", "time_per_step_ns", "share"]
    done = steps[steps["complete"] & steps["wall_ns"].notna()]
    if not len(sync_per_step) or not len(done):
        return pd.DataFrame(columns=columns)
    part = sync_per_step[sync_per_step["step"].isin(done["step"])]
    totals = part.groupby(["reason", "backend"], observed=True).agg(count=("count", "sum"), time_ns=("time_ns", "sum"))
    out = pd.DataFrame({
        "syncs_per_step": totals["count"] / len(done),
        "time_per_step_ns": totals["time_ns"] / len(done),
        "share": totals["time_ns"] / done["wall_ns"].sum(),
    }).reset_index()
    return out.sort_values("time_per_step_ns", ascending=False, kind="stable").reset_index(drop=True)[columns]


def eval_callback(steps: pd.DataFrame, sync: pd.DataFrame) -> pd.DataFrame:
    """Per step run under an eval callback: syncs, graph views, views the callback needed, views per split, the
    syncs' time and their share of the step."""
    columns = ["step", "syncs", "views", "needed", "splits", "views_per_split", "sync_ns", "wall_ns", "share"]
    callback = sync[(text(sync["reason"]) == "eval_callback").to_numpy(bool)] if len(sync) else sync
    if not len(callback):
        return pd.DataFrame(columns=columns)
    callback = inside_steps(callback, steps, by_thread=True)
    frame = pd.DataFrame({
        "step": callback[JOIN_COLUMN].to_numpy(), "split_id": callback["split_id"].to_numpy(np.int64),
        "n_views": callback["n_views"].to_numpy(np.int64), "n_needed": callback["n_needed"].to_numpy(np.int64),
        "duration_ns": callback["duration_ns"].to_numpy(np.int64), "seq": callback["seq"].to_numpy(np.int64),
    })
    if not len(frame):
        return pd.DataFrame(columns=columns)
    # n_views / n_needed count up within a split: its last sync holds the split's totals
    last = frame.sort_values("seq").groupby(["step", "split_id"]).last()
    per_split = last.groupby("step").agg(views=("n_views", "sum"), needed=("n_needed", "sum"),
                                         splits=("n_views", "size"))
    per_step = frame.groupby("step").agg(syncs=("duration_ns", "size"), sync_ns=("duration_ns", "sum"))
    out = per_step.join(per_split)
    out["views_per_split"] = out["views"] / out["splits"]
    out["wall_ns"] = steps.set_index("step")["wall_ns"].reindex(out.index)
    out["share"] = out["sync_ns"] / out["wall_ns"]
    return out.reset_index()[columns]
