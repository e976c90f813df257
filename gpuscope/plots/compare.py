"""Before and after: the two runs' step times over context on the same axes, and the difference per context
bucket with its bootstrap confidence band."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gpuscope.compare.compare import Comparison, context_bucket
from gpuscope.plots.context import step_time_vs_context
from gpuscope.plots.style import TEMPLATE, empty, figure, hover, ms, shared_axes, text
from gpuscope.units import duration, duration_range, number

ARM_COLORS = ("#636EFA", "#EF553B")


def before_after(step_time: pd.DataFrame, steps_a: pd.DataFrame, steps_b: pd.DataFrame, *,
                 labels: tuple[str, str] = ("A", "B"), n_tokens: int = 1,
                 title: str = "Before and after") -> go.Figure:
    """Top: every step of A and of B against context, with the median of each context bucket. Bottom: B - A per
    bucket (median difference) with its 95% bootstrap interval as a band; a bucket's verdict is in its hover text.

    step_time: Comparison.step_time; steps_a, steps_b: each Analysis.complete_steps."""
    buckets = step_time[step_time["n_tokens"] == n_tokens] if len(step_time) else step_time
    if not len(buckets):
        return empty(figure(title, "context", "ms"), "no context bucket with enough steps in both runs")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1, row_heights=[0.6, 0.4],
                        subplot_titles=["step time (every step; lines: bucket medians)",
                                        f"{text(labels[1])} - {text(labels[0])} per context bucket (95% interval)"])
    several = buckets["config"].nunique() > 1
    for config, rows in buckets.groupby("config", sort=False):
        suffix = f" {text(config)}" if several else ""
        for arm, (label, steps, median_column) in enumerate(((labels[0], steps_a, "median_a_ns"),
                                                             (labels[1], steps_b, "median_b_ns"))):
            chosen = steps[(steps["config"] == config) & (steps["n_tokens"] == n_tokens)]
            name = f"{text(label)}{suffix}"
            fig.add_trace(go.Scatter(
                x=chosen["context"], y=ms(chosen["wall_ns"]), mode="markers", name=name, legendgroup=name,
                marker=dict(color=ARM_COLORS[arm], size=4, opacity=0.35),
                hovertext=hover([{"run": label, "configuration": config, "step": int(r.step),
                                  "context": int(r.context), "time": duration(r.wall_ns)}
                                 for r in chosen.itertuples()]), hoverinfo="text"), row=1, col=1)
            centers = _bucket_centers(rows, chosen)
            fig.add_trace(go.Scatter(
                x=centers, y=ms(rows[median_column]), mode="lines+markers", name=f"{name} median",
                legendgroup=name, showlegend=False, line=dict(color=ARM_COLORS[arm], width=2),
                hovertext=[f"{name}: median {duration(v)}, context {int(c)}+" for v, c in
                           zip(rows[median_column], rows["context_from"])], hoverinfo="text"), row=1, col=1)
        both = pd.concat([steps_a, steps_b])
        centers = _bucket_centers(rows, both[(both["config"] == config) & (both["n_tokens"] == n_tokens)])
        low, high = ms(rows["ci_low_ns"]), ms(rows["ci_high_ns"])
        fig.add_trace(go.Scatter(
            x=np.concatenate([centers, centers[::-1]]), y=np.concatenate([high, low[::-1]]), mode="lines",
            fill="toself",
            fillcolor="rgba(99,110,250,0.18)", line=dict(width=0), hoverinfo="skip", showlegend=False),
            row=2, col=1)
        fig.add_trace(go.Scatter(
            x=centers, y=ms(rows["diff_ns"]), mode="lines+markers", name=f"difference{suffix}",
            line=dict(color="#333", width=2),
            hovertext=[f"context {int(r.context_from)}+: {duration(r.diff_ns, signed=True)} "
                       f"({number(r.diff_pct, signed=True)}%), 95% interval "
                       f"{duration_range(r.ci_low_ns, r.ci_high_ns, between=' to ', signed=True)}: {text(r.verdict)}"
                       for r in rows.itertuples()], hoverinfo="text"), row=2, col=1)
    fig.add_hline(y=0, line=dict(color="#888", width=1, dash="dot"), row=2, col=1)
    fig.update_yaxes(title_text="step time (ms)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="difference (ms)", row=2, col=1)
    fig.update_xaxes(title_text="context (KV cells in use)", row=2, col=1)
    fig.update_layout(template=TEMPLATE, title=title, height=680, hovermode="closest",
                      margin=dict(l=70, r=30, t=70, b=50))
    return fig


def comparison_figures(comparison: Comparison) -> dict[str, go.Figure]:
    """The figures of a comparison: before and after on one pair of axes, then each trace's step time against
    context, the two on the same x and y ranges (A and B read against one scale)."""
    c = comparison
    step_time = c.step_time
    n_tokens = 1 if (step_time["n_tokens"] == 1).any() else int(step_time["n_tokens"].iloc[0]) if len(step_time) \
        else 1
    (label_a, label_b), (name_a, name_b) = c.labels, c.names
    figures = {"before_after": before_after(step_time, c.steps_a, c.steps_b, labels=c.labels, n_tokens=n_tokens,
                                            title=f"{label_a} ({name_a}) against {label_b} ({name_b})")}
    for key, label, name, analysis in (("a", label_a, name_a, c.a), ("b", label_b, name_b, c.b)):
        figures[key] = step_time_vs_context(analysis.complete_steps, analysis.fits, analysis.floor, n_tokens=n_tokens,
                                            title=f"{label} ({name}): step time against context")
    shared_axes(figures["a"], figures["b"])
    return figures


def _bucket_centers(buckets: pd.DataFrame, steps: pd.DataFrame | None) -> np.ndarray:
    """Where to draw each bucket: the median context of its steps when known, else its lower edge."""
    edges = buckets["context_from"].to_numpy(np.float64)
    if steps is None or not len(steps):
        return edges
    medians = steps.groupby(context_bucket(steps["context"].to_numpy()))["context"].median()
    return np.array([medians.get(int(edge), edge) for edge in edges], dtype=np.float64)
