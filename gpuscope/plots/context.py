"""Step time against context: the measured steps of each configuration, the fitted lines, the memory-bandwidth
floor, and markers on the steps where the engine did something that changes a step's cost."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from gpuscope.plots.style import config_colors, empty, figure, hover, ms, text
from gpuscope.units import duration, duration_range, share, size

# syncs every step of a healthy run makes (the final synchronize, blocking transfers of a backend without async
# copies, the hand-over between devices of a split): marking them would mark every step
ROUTINE_SYNCS = frozenset({"user", "async_fallback", "input_copy", "split_boundary"})
MARKER_SYMBOLS = {"reallocation": "x", "re-reserve": "diamond", "FA plan": "star", "sync": "triangle-up"}


def event_markers(step_events: pd.DataFrame, sync_per_step: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """The steps to mark on a step-time plot and why: one row per (step, kind) with the step's config, n_tokens,
    context and wall_ns, the marker `kind` (reallocation, re-reserve, FA plan, sync) and a `detail` line.

    step_events: Analysis.step_events; sync_per_step: Analysis.syncs; steps: Analysis.complete_steps."""
    columns = ["step", "config", "n_tokens", "context", "wall_ns", "kind", "detail"]
    rows = []
    events = step_events.set_index("step") if len(step_events) else pd.DataFrame()
    for kind, column, what in (("reallocation", "reallocs", "graph allocator reallocation(s)"),
                               ("re-reserve", "reserves", "scheduler re-reserve(s)"),
                               ("FA plan", "new_fa_plans", "new FlashAttention plan(s)")):
        if column in events.columns:
            hits = events[events[column] > 0]
            rows += [{"step": step, "kind": kind, "detail": f"{int(count)} {what}"}
                     for step, count in hits[column].items()]
    if len(sync_per_step):
        unusual = sync_per_step[~sync_per_step["reason"].astype(str).isin(ROUTINE_SYNCS)]
        for step, group in unusual.groupby("step"):
            detail = ", ".join(f"{int(r.count)} {r.reason} on {r.backend} ({duration(r.time_ns)})"
                               for r in group.itertuples())
            rows.append({"step": step, "kind": "sync", "detail": f"syncs: {detail}"})
    if not rows:
        return pd.DataFrame(columns=columns)
    marked = pd.DataFrame(rows).merge(steps[["step", "config", "n_tokens", "context", "wall_ns"]], on="step")
    return marked[columns]


def _decode_steps(steps: pd.DataFrame, n_tokens: int | None) -> pd.DataFrame:
    chosen = steps[steps["wall_ns"].notna()]
    return chosen if n_tokens is None else chosen[chosen["n_tokens"] == n_tokens]


def step_time_vs_context(steps: pd.DataFrame, fits: pd.DataFrame | None = None, floor: pd.DataFrame | None = None,
                         markers: pd.DataFrame | None = None, *, n_tokens: int | None = 1,
                         title: str = "Step time against context") -> go.Figure:
    """Per configuration: every step (ms) at its context (KV cells in use), the robust fit over the steps it was
    made from (dashed) and the bandwidth floor (dotted), with event markers on the same axes.

    steps: Analysis.complete_steps; fits: Analysis.fits; floor: Analysis.floor (None: no model bytes);
    markers: event_markers(...). n_tokens: the batch size to draw (1: single-token decode; None: every size)."""
    batch = "decode steps (1 token)" if n_tokens == 1 else f"{n_tokens}-token steps" if n_tokens else "all steps"
    fig = figure(f"{title}: {batch}", "context (KV cells in use)", "step time (ms)", legend_title="configuration")
    shown = _decode_steps(steps, n_tokens)
    if not len(shown):
        return empty(fig, "no complete steps of this batch size in the trace")
    colors = config_colors(shown["config"])
    for config, group in shown.groupby("config", sort=False):
        config = str(config)
        # a context's first step pays one-time costs (graph build, allocation): drawn open, outside the legend
        for cold, part in group.groupby("cold_start", sort=True):
            rows = [{"step": int(r.step), "configuration": config, "context": int(r.context),
                     "tokens": int(r.n_tokens), "time": duration(r.wall_ns),
                     "KV view": "" if pd.isna(r.n_kv) else int(r.n_kv),
                     "graph reused": "" if pd.isna(r.graph_reused) else bool(r.graph_reused),
                     "first step of its context": bool(r.cold_start)} for r in part.itertuples()]
            fig.add_trace(go.Scatter(
                x=part["context"], y=ms(part["wall_ns"]), mode="markers",
                name=text(config) if not cold else f"{text(config)}: first steps", legendgroup=config,
                showlegend=not cold or not (~group["cold_start"]).any(),
                marker=dict(color=colors[config], size=6, opacity=0.75, symbol="circle-open" if cold else "circle"),
                hovertext=hover(rows), hoverinfo="text"))
    for fit in (fits.itertuples() if fits is not None and len(fits) else []):
        config = str(fit.config)
        if config not in colors or np.isnan(fit.slope_ns_per_cell) or (n_tokens and fit.n_tokens != n_tokens):
            continue
        x = np.array([fit.context_min, fit.context_max], dtype=np.float64)
        label = (f"fit {text(config)}: {duration(fit.intercept_ns)} + {duration(fit.slope_ns_per_cell * 1e3)} per 1k "
                 f"cells (95% CI {duration_range(fit.slope_ci_low * 1e3, fit.slope_ci_high * 1e3, between=' to ')})")
        fig.add_trace(go.Scatter(
            x=x, y=ms(fit.intercept_ns + fit.slope_ns_per_cell * x), mode="lines", name=f"fit: {text(config)}",
            legendgroup=config, showlegend=False, line=dict(color=colors[config], dash="dash", width=2),
            hovertext=[label, label], hoverinfo="text"))
    if floor is not None and len(floor) and floor["floor_ns"].notna().any():
        for config, group in _decode_steps(floor, n_tokens).groupby("config", sort=False):
            config = str(config)
            group = group.dropna(subset=["floor_ns"]).sort_values("context")
            if config not in colors or not len(group):
                continue
            rows = [{"configuration": config, "context": int(r.context), "floor": duration(r.floor_ns),
                     "bytes read": size(r.bytes_read), "efficiency": share(r.efficiency)}
                    for r in group.itertuples()]
            fig.add_trace(go.Scatter(
                x=group["context"], y=ms(group["floor_ns"]), mode="lines", name=f"bandwidth floor: {text(config)}",
                legendgroup=config, line=dict(color=colors[config], dash="dot", width=1.5), hovertext=hover(rows),
                hoverinfo="text"))
    if markers is not None and len(markers):
        chosen = _decode_steps(markers, n_tokens)
        for kind, group in chosen.groupby("kind", sort=False):
            rows = [{"step": int(r.step), "configuration": str(r.config), "context": int(r.context),
                     "time": duration(r.wall_ns), "event": r.detail} for r in group.itertuples()]
            fig.add_trace(go.Scatter(
                x=group["context"], y=ms(group["wall_ns"]), mode="markers", name=text(kind),
                legendgroup=f"event {kind}",
                marker=dict(symbol=MARKER_SYMBOLS.get(kind, "circle-open"), size=11, color="rgba(0,0,0,0)",
                            line=dict(color="#222", width=1.5)),
                hovertext=hover(rows), hoverinfo="text"))
    fig.update_yaxes(rangemode="tozero")
    return fig
