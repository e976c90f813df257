"""Figures of tables and matrices: the FlashAttention plans the engine chose, and the cross-device copy matrix."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from gpuscope.plots.style import TEMPLATE, device_namer, empty, figure, text
from gpuscope.units import duration, number, share, size

_NONE_FILL = "#fde0dd"
_ROW_FILL = "#ffffff"


def _short_list(values, limit: int = 6) -> str:
    values = list(values)
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" ... ({len(values)})" if len(values) > limit else "")


def fa_plan_table(fa_plans: pd.DataFrame, title: str = "FlashAttention plans") -> go.Figure:
    """One row per distinct plan (Analysis.fa_plans): shape, cache types, the kernel chosen and why, how often and
    for which batch sizes and KV views. Plans that found no kernel (`none`) are shaded: that attention could not
    run on its device."""
    if not len(fa_plans):
        return empty(figure(title, "", "", height=240), "no FlashAttention plans in the trace (FA off, or a "
                                                       "backend without the FA hooks)")
    none = fa_plans["kernel"].astype(str) == "none"
    header = ["device", "head dim K/V", "heads Q/KV", "types K/V", "kernel", "reason", "selections",
              "batch sizes", "KV view", "callers", "steps"]
    columns = [
        fa_plans["device"], fa_plans["head_dim_k"].astype(str) + "/" + fa_plans["head_dim_v"].astype(str),
        fa_plans["q_heads"].astype(str) + "/" + fa_plans["kv_heads"].astype(str),
        fa_plans["type_k"].astype(str) + "/" + fa_plans["type_v"].astype(str), fa_plans["kernel"],
        fa_plans["reason"], fa_plans["selections"], fa_plans["q_tokens"].map(_short_list),
        fa_plans["n_kv_min"].astype(str) + "-" + fa_plans["n_kv_max"].astype(str),
        fa_plans["callers"].map(_short_list), fa_plans["steps"].map(len),
    ]
    fill = [[_NONE_FILL if n else _ROW_FILL for n in none]] * len(header)
    fig = go.Figure(go.Table(
        header=dict(values=[f"<b>{h}</b>" for h in header], fill_color="#eef1f6", align="left"),
        cells=dict(values=[[text(v) for v in column] for column in columns], fill_color=fill, align="left")))
    fig.update_layout(template=TEMPLATE, title=title + (f" ({int(none.sum())} with no kernel)" if none.any() else ""),
                      height=min(900, 160 + 32 * len(fa_plans)), margin=dict(l=20, r=20, t=60, b=20))
    return fig


def copy_matrix(copy_pairs: pd.DataFrame, value: str = "time_per_step_ns", *, device_names: pd.DataFrame | None = None,
                title: str = "Cross-device copies per step") -> go.Figure:
    """Source device (rows) by destination device (columns), coloured by `value` (Analysis.copy_pairs of one
    configuration: time_per_step_ns, bytes_per_step or copies_per_step); every cell says copies, bytes and time per
    step and the tensors copied most. device_names: Analysis.device_names (devices named as the configuration names
    them, the engine's name and address on hover)."""
    fig = figure(title, "destination device", "source device", height=420)
    if not len(copy_pairs):
        return empty(fig, "no cross-device copies in the complete steps")
    device = device_namer(device_names)
    sources = sorted(copy_pairs["src_device"].astype(str).unique())
    targets = sorted(copy_pairs["dst_device"].astype(str).unique())
    z = np.full((len(sources), len(targets)), np.nan)
    notes = [["" for _ in targets] for _ in sources]
    cell_text = [["" for _ in targets] for _ in sources]
    for r in copy_pairs.itertuples():
        i, j = sources.index(str(r.src_device)), targets.index(str(r.dst_device))
        z[i, j] = getattr(r, value) / (1e6 if value.endswith("_ns") else 1)
        cell_text[i][j] = f"{number(r.copies_per_step)} copies<br>{size(r.bytes_per_step)}<br>" \
                          f"{duration(r.time_per_step_ns)}"
        notes[i][j] = (f"{text(device(r.src_device)[1])} -> {text(device(r.dst_device)[1])}<br>"
                       f"{number(r.copies_per_step)} copies, "
                       f"{size(r.bytes_per_step)}, {duration(r.time_per_step_ns)} per step "
                       f"({share(r.share)} of step time)<br>most copied: {text(_short_list(r.top_tensors, 5))}")
    unit = {"time_per_step_ns": "ms per step", "bytes_per_step": "bytes per step",
            "copies_per_step": "copies per step"}.get(value, value)
    fig.add_trace(go.Heatmap(z=z, x=[text(device(t)[0]) for t in targets], y=[text(device(s)[0]) for s in sources],
                             colorscale="Reds", colorbar=dict(title=unit), text=cell_text, texttemplate="%{text}",
                             hovertext=notes, hoverinfo="text", xgap=2, ygap=2))
    fig.update_xaxes(type="category", side="bottom")
    fig.update_yaxes(type="category", autorange="reversed")
    return fig
