"""Allocator: graph-allocator reallocations per step and their reasons, churn (the allocator flipping between the
same graph sizes), bytes freed and allocated, and the time lost to scheduler re-reserves (sync of all backends
plus the reserve itself)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from gpuscope.analysis.columns import text
from gpuscope.trace.steps import inside_steps


def per_step(steps: pd.DataFrame, gallocr_realloc: pd.DataFrame, gallocr_buffer: pd.DataFrame,
             sched_reserve: pd.DataFrame) -> pd.DataFrame:
    """Per step: reallocation decisions by reason, buffer (re)allocations with bytes freed and allocated,
    re-reserves and the time they took."""
    index = pd.Index(steps["step"].to_numpy(np.int64), name="step")
    out = pd.DataFrame(index=index)
    realloc = inside_steps(gallocr_realloc, steps, by_thread=True)
    out["reallocs"] = realloc.groupby("in_step").size().reindex(index, fill_value=0)
    by_reason = realloc.groupby(["in_step", text(realloc["reason"])], observed=True).size().unstack(fill_value=0)
    for reason, count in by_reason.items():
        out[f"realloc_{reason}"] = count.reindex(index, fill_value=0)
    buffers = inside_steps(gallocr_buffer, steps, by_thread=True)
    grouped = buffers.groupby("in_step")
    out["buffer_reallocs"] = grouped.size().reindex(index, fill_value=0)
    out["bytes_freed"] = grouped["old_size"].sum().reindex(index, fill_value=0).astype(np.int64)
    out["bytes_allocated"] = grouped["new_size"].sum().reindex(index, fill_value=0).astype(np.int64)
    reserves = inside_steps(sched_reserve, steps, by_thread=True)
    grouped = reserves.groupby("in_step")
    out["reserves"] = grouped.size().reindex(index, fill_value=0)
    out["reserve_sync_ns"] = grouped["sync_ns"].sum().reindex(index, fill_value=0).astype(np.int64)
    out["reserve_ns"] = grouped["reserve_ns"].sum().reindex(index, fill_value=0).astype(np.int64)
    out["time_lost_ns"] = out["reserve_sync_ns"] + out["reserve_ns"]
    return out.reset_index()


def _flips(sizes: np.ndarray) -> tuple[int, bool]:
    """How often a size came back to the one it had two re-plans before, and whether that is the pattern."""
    returns = int(np.sum(sizes[2:] == sizes[:-2])) if len(sizes) > 2 else 0
    alternating = len(sizes) >= 4 and returns >= 0.5 * (len(sizes) - 2) and len(np.unique(sizes)) <= 4
    return returns, alternating


def churn(gallocr_realloc: pd.DataFrame, sched_reserve: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """Re-plans inside steps, per graph allocator (node-count reallocations) and per scheduler (re-reserves after
    an allocation failed), with the graph sizes they went through and whether those sizes take turns (A -> B -> A:
    two graphs sharing one allocator). One row per allocator or scheduler."""
    columns = ["source", "address", "replans", "steps", "returns", "sizes", "alternating"]
    rows = []
    sequences = []
    if len(gallocr_realloc):
        frame = inside_steps(gallocr_realloc, steps, by_thread=True)
        frame = frame[text(frame["reason"]) == "n_nodes"]
        sequences += [("gallocr", address, group) for address, group in
                      frame.sort_values("seq").groupby("galloc", sort=False)]
    if len(sched_reserve):
        frame = inside_steps(sched_reserve, steps, by_thread=True)
        frame = frame[text(frame["trigger"]) == "alloc_failed"]
        sequences += [("scheduler", address, group) for address, group in
                      frame.sort_values("seq").groupby("sched", sort=False)]
    for source, address, group in sequences:
        sizes = group["new_count" if source == "gallocr" else "n_nodes"].to_numpy(np.int64)
        returns, alternating = _flips(sizes)
        rows.append({"source": source, "address": int(address), "replans": len(group),
                     "steps": int(group["in_step"].nunique()), "returns": returns,
                     "sizes": [int(v) for v in pd.unique(sizes)[:6]], "alternating": alternating})
    return pd.DataFrame(rows, columns=columns).sort_values("replans", ascending=False, kind="stable") \
        .reset_index(drop=True)
