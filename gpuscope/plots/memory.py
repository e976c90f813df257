"""Memory per device over time, stacked by owner (weights, KV cache, compute buffers, outputs)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gpuscope.analysis.memory import MAPPED, timeline
from gpuscope.plots.style import TEMPLATE, TIME_AXIS, device_namer, empty, figure, owner_color, seconds_since, text
from gpuscope.units import MIB, number, size



def held_over_time(buffers: pd.DataFrame) -> pd.DataFrame:
    """Bytes held per location and owner after every allocation or free: ts_ns, location, owner, bytes (one
    column per owner, wide). Buffers wrapping a mapped model file count under '<owner> (mapped file)': they are
    page cache, not allocations, but they are where the weights are read from."""
    if not len(buffers):
        return pd.DataFrame(columns=["ts_ns", "location"])
    mapped = buffers["mapped"].astype(bool)
    owners = buffers["owner"].astype(str).where(~mapped, buffers["owner"].astype(str) + MAPPED)
    changes = timeline(buffers.assign(owner=owners), include_mapped=True)
    parts = []
    for location, part in changes.groupby("location", sort=True):
        # runs of a sweep follow one another in time: summing every run's changes gives what is held at each time
        wide = part.pivot_table(index="ts_ns", columns="owner", values="delta", aggfunc="sum").fillna(0).cumsum()
        parts.append(wide.reset_index().assign(location=location))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["ts_ns", "location"])


def memory_over_time(buffers: pd.DataFrame, *, t0_ns: int, device_names: pd.DataFrame | None = None,
                     title: str = "Memory per device by owner") -> go.Figure:
    """One panel per memory location (a device, or the host), the bytes held there stacked by owner over time.

    buffers: Analysis.buffers (buffer lifetimes) of one configuration (a sweep's configurations follow one another
    in time: draw each on its own); t0_ns: the trace's time origin, Analysis.t0_ns; device_names:
    Analysis.device_names (panels named as the configuration names its devices)."""
    held = held_over_time(buffers)
    if not len(held):
        return empty(figure(title, TIME_AXIS, "MiB"), "no buffer events in the trace")
    locations = list(dict.fromkeys(held["location"]))
    device = device_namer(device_names)
    fig = make_subplots(rows=len(locations), cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=[text(device(location)[0]) for location in locations])
    owner_order = ["weights", "weights" + MAPPED, "kv", "compute", "output"]
    for row, location in enumerate(locations, start=1):
        part = held[held["location"] == location]
        owners = [c for c in part.columns if c not in ("ts_ns", "location") and part[c].notna().any()]
        owners.sort(key=lambda o: (owner_order.index(o) if o in owner_order else len(owner_order), o))
        x = seconds_since(part["ts_ns"], t0_ns)
        for index, owner in enumerate(owners):
            values = part[owner].fillna(0).to_numpy(np.float64)
            hovers = [f"{text(device(location)[1])}, {text(owner)}: {size(v)} at {number(t)} s"
                      for v, t in zip(values, x)]
            fig.add_trace(go.Scatter(
                x=x, y=values / MIB, mode="lines", line_shape="hv", stackgroup=f"location{row}", name=text(owner),
                legendgroup=owner, showlegend=row == 1 or owner not in _owners_before(held, locations[:row - 1]),
                line=dict(width=0.5, color=owner_color(owner, index)),
                opacity=0.6 if owner.endswith(MAPPED) else 1.0, hovertext=hovers, hoverinfo="text"),
                row=row, col=1)
        fig.update_yaxes(title_text="MiB", rangemode="tozero", row=row, col=1)
    fig.update_xaxes(title_text=TIME_AXIS, row=len(locations), col=1)
    fig.update_layout(template=TEMPLATE, title=title, height=260 + 230 * len(locations), hovermode="closest",
                      legend_title_text="owner", margin=dict(l=70, r=30, t=70, b=50))
    return fig


def _owners_before(held: pd.DataFrame, locations: list[str]) -> set[str]:
    """Owners already in the legend from earlier panels (each owner appears in the legend once)."""
    part = held[held["location"].isin(locations)]
    return {c for c in part.columns if c not in ("ts_ns", "location") and part[c].notna().any()}
