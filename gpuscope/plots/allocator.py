"""The graph allocator's decisions over time: reallocations (and why), scheduler re-reserves, and the compute
buffers it (re)allocated, one row of markers each, with the event's details on hover."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from gpuscope.plots.style import TIME_AXIS, empty, figure, hover, seconds_since, text
from gpuscope.units import duration, size


def _in_step(frame: pd.DataFrame, in_step: pd.Series | None) -> pd.arrays.IntegerArray:
    if in_step is not None and len(in_step) == len(frame):
        return in_step.array
    return pd.array([pd.NA] * len(frame), dtype="Int64")


def allocator_timeline(gallocr_realloc: pd.DataFrame, sched_reserve: pd.DataFrame, gallocr_buffer: pd.DataFrame, *,
                       realloc_steps: pd.Series | None = None, reserve_steps: pd.Series | None = None,
                       t0_ns: int, title: str = "Allocator events") -> go.Figure:
    """Markers over time (s since t0_ns, the trace's time origin: Analysis.t0_ns): one row per reallocation
    reason, one per re-reserve trigger, one for buffer (re)allocations. The tables are the trace's
    `gallocr_realloc`, `sched_reserve` and `gallocr_buffer`; realloc_steps / reserve_steps: Analysis.in_step(kind)
    for the step ids in the hover text."""
    fig = figure(title, TIME_AXIS, "", height=380)
    frames = [f for f in (gallocr_realloc, sched_reserve, gallocr_buffer) if len(f)]
    if not frames:
        return empty(fig, "no allocator events: every graph fit the allocator's plan")
    if len(gallocr_realloc):
        steps = _in_step(gallocr_realloc, realloc_steps)
        for reason, group in gallocr_realloc.assign(at_step=steps).groupby(gallocr_realloc["reason"].astype(str),
                                                                             sort=True):
            rows = [{"step": "outside steps" if pd.isna(r.at_step) else int(r.at_step), "tensor": r.tensor,
                     "nodes/leafs": f"{r.old_count} -> {r.new_count}",
                     "size needed": size(r.size_needed), "slot reserved": size(r.size_max),
                     "allocator": hex(int(r.galloc)), "device": r.device} for r in group.itertuples()]
            fig.add_trace(go.Scatter(
                x=seconds_since(group["ts_ns"], t0_ns), y=[f"reallocation: {text(reason)}"] * len(group),
                mode="markers", name=f"reallocation: {text(reason)}", marker=dict(symbol="x", size=9, color="#d62728"),
                hovertext=hover(rows), hoverinfo="text"))
    if len(sched_reserve):
        steps = _in_step(sched_reserve, reserve_steps)
        for trigger, group in sched_reserve.assign(at_step=steps).groupby(sched_reserve["trigger"].astype(str),
                                                                           sort=True):
            rows = [{"step": "outside steps" if pd.isna(r.at_step) else int(r.at_step),
                     "sync before": duration(r.sync_ns), "reserve": duration(r.reserve_ns),
                     "graph": f"{r.n_nodes} nodes, {r.n_splits} splits",
                     "backends changed": bool(r.backend_ids_changed), "scheduler": hex(int(r.sched))}
                    for r in group.itertuples()]
            fig.add_trace(go.Scatter(
                x=seconds_since(group["ts_ns"], t0_ns), y=[f"re-reserve: {text(trigger)}"] * len(group),
                mode="markers", name=f"re-reserve: {text(trigger)}",
                marker=dict(symbol="diamond", size=9, color="#ff7f0e",
                            line=dict(width=0.5, color="#444")),
                hovertext=hover(rows), hoverinfo="text"))
    if len(gallocr_buffer):
        rows = [{"buffer type": r.buft, "size": f"{size(r.old_size)} -> {size(r.new_size)}",
                 "buffer": int(r.buffer_id), "chunks": int(r.n_chunks), "allocator": hex(int(r.galloc))}
                for r in gallocr_buffer.itertuples()]
        fig.add_trace(go.Scatter(
            x=seconds_since(gallocr_buffer["ts_ns"], t0_ns), y=["buffer (re)allocation"] * len(gallocr_buffer),
            mode="markers", name="buffer (re)allocation", marker=dict(symbol="square", size=8, color="#2ca02c"),
            hovertext=hover(rows), hoverinfo="text"))
    fig.update_yaxes(type="category", title_text=None)
    return fig
