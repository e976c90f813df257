"""Step time against context: the measured steps of each configuration, the fitted lines, the memory-bandwidth
floor, and markers on the steps where the engine did something that changes a step's cost."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import hex_to_rgb
from plotly.subplots import make_subplots

from gpuscope.plots.style import TEMPLATE, config_colors, empty, figure, hover, log_toggle, ms, text
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


def _translucent(color: str, alpha: float = 0.18) -> str:
    red, green, blue = hex_to_rgb(color)
    return f"rgba({red},{green},{blue},{alpha})"


def step_time_vs_context(steps: pd.DataFrame, fits: pd.DataFrame | None = None, floor: pd.DataFrame | None = None,
                         markers: pd.DataFrame | None = None, *, bands: pd.DataFrame | None = None,
                         n_tokens: int | None = 1, facets: bool = True,
                         title: str = "Step time against context") -> go.Figure:
    """Per configuration: every step (ms) at its context (KV cells in use), the median with its interquartile band,
    the robust fit over the steps it was made from (dashed) and the bandwidth floor (dotted), with event markers on
    the same axes. Several configurations get a panel each, over one context axis but each on its own time axis (on
    one linear axis a configuration of 100 ms squashes one of 5 ms into its bottom twentieth); facets=False draws
    them on one axis. Buttons switch every time axis between linear and logarithmic.

    steps: Analysis.complete_steps; fits: Analysis.fits; floor: Analysis.floor (None: no model bytes);
    markers: event_markers(...); bands: Analysis.step_time_bands. n_tokens: the batch size to draw (1: single-token
    decode; None: every size)."""
    batch = "decode steps (1 token)" if n_tokens == 1 else f"{n_tokens}-token steps" if n_tokens else "all steps"
    shown = _decode_steps(steps, n_tokens)
    configs = [str(c) for c in pd.unique(shown["config"])] if len(shown) else []
    if len(configs) > 1 and facets:
        medians = shown[~shown["cold_start"].astype(bool)].groupby(shown["config"].astype(str))["wall_ns"].median()
        fig = make_subplots(rows=len(configs), cols=1, shared_xaxes=True, vertical_spacing=0.25 / len(configs),
                            subplot_titles=[f"{text(c)}: median {duration(medians.get(c, np.nan))}" for c in configs])
        row_of = {config: row for row, config in enumerate(configs, start=1)}
        fig.update_layout(template=TEMPLATE, title=f"{title}: {batch}", height=180 + 220 * len(configs),
                          hovermode="closest", legend_title_text="configuration",
                          margin=dict(l=70, r=30, t=90, b=60))
        fig.update_yaxes(title_text="ms", rangemode="tozero")
        fig.update_xaxes(title_text="context (KV cells in use)", row=len(configs), col=1)
    else:
        fig = figure(f"{title}: {batch}", "context (KV cells in use)", "step time (ms)", legend_title="configuration")
        row_of = {}
    if not len(shown):
        return empty(fig, "no complete steps of this batch size in the trace")

    def add(trace: go.Scatter, config: str) -> None:
        fig.add_trace(trace, **({"row": row_of[config], "col": 1} if row_of else {}))

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
            add(go.Scatter(
                x=part["context"], y=ms(part["wall_ns"]), mode="markers",
                name=text(config) if not cold else f"{text(config)}: first steps", legendgroup=config,
                showlegend=not cold or not (~group["cold_start"]).any(),
                marker=dict(color=colors[config], size=6, opacity=0.6, symbol="circle-open" if cold else "circle"),
                hovertext=hover(rows), hoverinfo="text"), config)
    chosen_bands = _decode_steps(bands.assign(wall_ns=bands["median_ns"]), n_tokens) \
        if bands is not None and len(bands) else pd.DataFrame()
    for config, band in (chosen_bands.groupby(chosen_bands["config"].astype(str), sort=False)
                         if len(chosen_bands) else []):
        if config not in colors:
            continue
        x = band["context"].to_numpy(np.float64)
        add(go.Scatter(x=np.concatenate([x, x[::-1]]), y=ms(np.concatenate([band["p75_ns"], band["p25_ns"][::-1]])),
                       fill="toself", fillcolor=_translucent(colors[config]), line=dict(width=0), mode="lines",
                       name=f"interquartile range: {text(config)}", legendgroup=config, showlegend=False,
                       hoverinfo="skip"), config)
        rows = [{"configuration": config, "context": f"{int(r.context)} (median of {int(r.steps)} steps)",
                 "median": duration(r.median_ns), "interquartile range": duration_range(r.p25_ns, r.p75_ns)}
                for r in band.itertuples()]
        add(go.Scatter(x=x, y=ms(band["median_ns"]), mode="lines", name=f"median: {text(config)}",
                       legendgroup=config, showlegend=False, line=dict(color=colors[config], width=2.5),
                       hovertext=hover(rows), hoverinfo="text"), config)
    for fit in (fits.itertuples() if fits is not None and len(fits) else []):
        config = str(fit.config)
        if config not in colors or np.isnan(fit.slope_ns_per_cell) or (n_tokens and fit.n_tokens != n_tokens):
            continue
        x = np.array([fit.context_min, fit.context_max], dtype=np.float64)
        label = (f"fit {text(config)}: {duration(fit.intercept_ns)} + {duration(fit.slope_ns_per_cell * 1e3)} per 1k "
                 f"cells (95% CI {duration_range(fit.slope_ci_low * 1e3, fit.slope_ci_high * 1e3, between=' to ')})")
        add(go.Scatter(
            x=x, y=ms(fit.intercept_ns + fit.slope_ns_per_cell * x), mode="lines", name=f"fit: {text(config)}",
            legendgroup=config, showlegend=False, line=dict(color=colors[config], dash="dash", width=2),
            hovertext=[label, label], hoverinfo="text"), config)
    if floor is not None and len(floor) and floor["floor_ns"].notna().any():
        for config, group in _decode_steps(floor, n_tokens).groupby("config", sort=False):
            config = str(config)
            group = group.dropna(subset=["floor_ns"]).sort_values("context")
            if config not in colors or not len(group):
                continue
            rows = [{"configuration": config, "context": int(r.context), "floor": duration(r.floor_ns),
                     "bytes read": size(r.bytes_read), "efficiency": share(r.efficiency)}
                    for r in group.itertuples()]
            add(go.Scatter(
                x=group["context"], y=ms(group["floor_ns"]), mode="lines", name=f"bandwidth floor: {text(config)}",
                legendgroup=config, line=dict(color=colors[config], dash="dot", width=1.5), hovertext=hover(rows),
                hoverinfo="text"), config)
    if markers is not None and len(markers):
        chosen = _decode_steps(markers, n_tokens)
        in_legend = set()
        for (kind, config), group in chosen.groupby(["kind", chosen["config"].astype(str)], sort=False):
            if config not in colors:
                continue
            rows = [{"step": int(r.step), "configuration": config, "context": int(r.context),
                     "time": duration(r.wall_ns), "event": r.detail} for r in group.itertuples()]
            add(go.Scatter(
                x=group["context"], y=ms(group["wall_ns"]), mode="markers", name=text(kind),
                legendgroup=f"event {kind}", showlegend=kind not in in_legend,
                marker=dict(symbol=MARKER_SYMBOLS.get(kind, "circle-open"), size=11, color="rgba(0,0,0,0)",
                            line=dict(color="#222", width=1.5)),
                hovertext=hover(rows), hoverinfo="text"), config)
            in_legend.add(kind)
    fig.update_yaxes(rangemode="tozero")
    return log_toggle(fig)
