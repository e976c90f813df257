"""Conventions every gpuscope figure follows: units on the axes, one colour per configuration label, and names
from the engine (tensors, buffer types, devices, configuration labels) shown as text, never read as markup.

Plotly draws the strings of a figure (legend entries, hover text, table cells, tick labels) as a small subset of
HTML (`<b>`, `<a href>`, `<br>`), so every string that came from a trace goes through `text()` first: escaped,
plotly shows it literally."""
from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative

from gpuscope.analysis.memory import MAPPED

TEMPLATE = "plotly_white"
PALETTE = qualitative.Plotly + qualitative.D3
# enough distinct colours for every legend entry of one figure
_MANY_COLORS = list(dict.fromkeys(PALETTE + qualitative.Dark24 + qualitative.Light24 + qualitative.Alphabet))
# budget and owner categories keep their colour across figures
CATEGORY_COLORS = {
    "weights": "#636EFA", "kv": "#EF553B", "compute": "#00CC96", "output": "#AB63FA", "unknown": "#BAB0AC",
    "copy": "#FFA15A", "reserve": "#FF6692", "host_prepare": "#B6E880", "host_scheduling": "#19D3F3",
    "host_after_compute": "#FECB52", "idle": "#E5E5E5", "unexplained_ns": "#BAB0AC", "gpu_idle": "#D0D0D0",
}


MAPPED_WEIGHTS_COLOR = "#A9AEF9"  # not in the palettes above: weights' blue, lighter


def text(value) -> str:
    """A value from a trace as plotly text: markup characters escaped, so it shows literally."""
    return html.escape("" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value),
                       quote=False)


def texts(values) -> list[str]:
    return [text(v) for v in values]


def config_colors(labels) -> dict[str, str]:
    """A colour per configuration label, in order of first appearance."""
    unique = list(dict.fromkeys(str(label) for label in labels))
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(unique)}


def owner_color(owner: str, fallback_index: int) -> str:
    """A memory owner's colour: weights over a mapped model file a lighter blue than weights in a buffer (two
    legend entries side by side must not share one), an owner with a suffix ('kv (seq 0)', 'compute (mapped file)') its category's."""
    if owner == "weights" + MAPPED:
        return MAPPED_WEIGHTS_COLOR
    return category_color(owner.split(" ")[0], fallback_index)


def category_color(category: str, fallback_index: int) -> str:
    if category in CATEGORY_COLORS:
        return CATEGORY_COLORS[category]
    if category.startswith("sync:"):
        return ["#d62728", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#9467bd"][
            fallback_index % 8]
    return PALETTE[fallback_index % len(PALETTE)]


class LegendColors:
    """One colour per legend entry over a whole figure: the same entry (matmul on either GPU's row) keeps its colour,
    and no two entries share one, whichever legend group they are in (palette colours were once handed out per
    group, and Meta's compute took the colour of CUDA0's flash_attn). A category keeps its usual colour
    (CATEGORY_COLORS) unless another entry already has it."""

    def __init__(self) -> None:
        self.given: dict[str, str] = {}

    def __call__(self, entry: str, category: str = "") -> str:
        if entry not in self.given:
            taken = set(self.given.values())
            usual = CATEGORY_COLORS.get(category)
            spare = [c for c in _MANY_COLORS if c not in taken]
            self.given[entry] = usual if usual and usual not in taken else next(
                (c for c in spare if c not in CATEGORY_COLORS.values()), spare[0] if spare else PALETTE[0])
        return self.given[entry]


def device_namer(names: pd.DataFrame | None):
    """A function from a device's engine spelling (RPC2, RPC0[127.0.0.1:<port>]) to (the name its configuration gave
    it, hover text with the engine's name and address); other names map to themselves. names: Analysis.device_names."""
    known = {} if names is None or not len(names) else {
        str(r.name): (str(r.shown), str(r.detail)) for r in names.itertuples()}

    def name(device) -> tuple[str, str]:
        return known.get(str(device), (str(device), str(device)))
    return name


def log_toggle(fig: go.Figure) -> go.Figure:
    """Buttons that draw every y axis of the figure linear or logarithmic (a slow configuration squashes the fast ones
    on a linear axis); back to linear restores the ranges the axes have now."""
    axes = [key for key in fig.layout if key.startswith("yaxis")]
    linear, log = {}, {}
    for axis in axes:
        span = fig.layout[axis].range
        linear[f"{axis}.type"], log[f"{axis}.type"], log[f"{axis}.autorange"] = "linear", "log", True
        if span is not None:
            linear[f"{axis}.range"] = list(span)
        else:
            linear[f"{axis}.autorange"] = True
    fig.update_layout(updatemenus=[dict(type="buttons", direction="right", x=1.0, xanchor="right", y=1.0,
                                         yanchor="bottom", showactive=True, pad=dict(t=0, b=4),
                                         buttons=[dict(label="linear", method="relayout", args=[linear]),
                                                  dict(label="log", method="relayout", args=[log])])])
    return fig


def figure(title: str, x_title: str, y_title: str, *, height: int = 460, legend_title: str | None = None) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(template=TEMPLATE, title=title, height=height, hovermode="closest",
                      legend_title_text=legend_title, margin=dict(l=70, r=30, t=60, b=60))
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title)
    return fig


def empty(fig: go.Figure, message: str) -> go.Figure:
    """A figure that says why it has nothing to draw, instead of blank axes."""
    fig.add_annotation(text=text(message), showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                       font=dict(size=14, color="#666"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def ms(ns) -> np.ndarray:
    return np.asarray(ns, dtype=np.float64) / 1e6


# every time axis counts from one origin, the trace's first event (Analysis.t0_ns), so that plots read together
TIME_AXIS = "time since the trace began (s)"


def seconds_since(ts_ns, t0_ns: int) -> np.ndarray:
    return (np.asarray(ts_ns, dtype=np.float64) - t0_ns) / 1e9


def shared_axes(*figures: go.Figure) -> None:
    """The same x and y ranges on every figure, so that runs drawn side by side read against one scale: from 0 (or
    the least value) to the largest value any of them draws."""
    xs = [np.asarray(t.x, np.float64) for fig in figures for t in fig.data if t.x is not None and len(t.x)]
    ys = [np.asarray(t.y, np.float64) for fig in figures for t in fig.data if t.y is not None and len(t.y)]
    if not xs or not ys:
        return
    x_low, x_high = min(0.0, min(np.nanmin(x) for x in xs)), max(np.nanmax(x) for x in xs)
    y_low, y_high = min(0.0, min(np.nanmin(y) for y in ys)), max(np.nanmax(y) for y in ys)
    for fig in figures:
        fig.update_xaxes(range=[x_low, x_high + 0.02 * (x_high - x_low)])
        fig.update_yaxes(range=[y_low, y_high + 0.05 * (y_high - y_low)])
        if fig.layout.updatemenus:
            log_toggle(fig)  # its linear button restores the shared ranges


def hover(rows: list[dict]) -> list[str]:
    """Hover text from (already formatted) key -> value dicts; values are escaped here."""
    return ["<br>".join(f"{key}: {text(value)}" for key, value in row.items()) for row in rows]
