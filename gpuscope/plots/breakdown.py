"""Per-step stacked time: where the decoding thread's wall time went (the hook budget), and, where the collectors
ran, what the GPU did in the step (kernel time by family, idle) and what the sampled CPU threads did."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gpuscope.plots.style import TEMPLATE, category_color, empty, figure, ms, text
from gpuscope.units import duration

_BUDGET_NAMES = {"copy": "cross-device copies", "reserve": "scheduler re-reserve",
                 "host_prepare": "host: batch, graph build, inputs", "host_scheduling": "host: scheduler loop",
                 "host_after_compute": "host: outputs", "idle": "idle (program between decode and results)",
                 "unexplained_ns": "unexplained"}


def _category_name(category: str) -> str:
    if category.startswith("split:"):
        return f"backend {category[6:]}: compute / launches"
    if category.startswith("sync:"):
        return f"sync ({category[5:]})"
    return _BUDGET_NAMES.get(category, category)


def _step_labels(steps: pd.DataFrame | None) -> dict[int, str]:
    if steps is None or not len(steps):
        return {}
    return {int(r.step): f"step {int(r.step)}, {text(r.config)}, context {int(r.context)}"
            for r in steps.itertuples()}


def step_breakdown(budget: pd.DataFrame, steps: pd.DataFrame | None = None, *,
                   gpu_families: pd.DataFrame | None = None, gpu_busy: pd.DataFrame | None = None,
                   cpu_time: pd.DataFrame | None = None, title: str = "Where each step's time went") -> go.Figure:
    """Stacked bars per step (ms). Row 1: the decoding thread's wall time by budget category (Analysis.budget).
    Row 2, when kernels were collected: GPU time by kernel family (kernel_table.family_time_per_step) and GPU idle
    (kernel_table.gpu_busy_per_step). Row 3, when native stacks were sampled: CPU time by category
    (collectors.stacks.time_per_step). steps: the steps to draw (e.g. Analysis.complete_steps of one batch size),
    which also label the hover text; None draws every step of the budget."""
    chosen = budget if steps is None else budget[budget["step"].isin(steps["step"])]
    if not len(chosen):
        return empty(figure(title, "step", "time (ms)"), "no complete steps to break down")
    keep = set(chosen["step"])
    gpu = gpu_families is not None and len(gpu_families) and gpu_families["step"].isin(keep).any()
    cpu = cpu_time is not None and len(cpu_time) and cpu_time["step"].isin(keep).any()
    titles = ["decoding thread (engine hooks)"] + (["GPU (kernels collected)"] if gpu else []) + \
        (["CPU threads (native stacks sampled)"] if cpu else [])
    fig = make_subplots(rows=len(titles), cols=1, shared_xaxes=True, subplot_titles=titles, vertical_spacing=0.08)
    labels = _step_labels(steps)

    def add_bars(row: int, frame: pd.DataFrame, category_column: str, value_column: str, prefix: str,
                 naming=str) -> None:
        for index, (category, group) in enumerate(frame.groupby(category_column, sort=False, observed=True)):
            name = text(f"{prefix}{naming(str(category))}")
            hovers = [f"{labels.get(int(s), f'step {int(s)}')}<br>{name}: {duration(v)}"
                      for s, v in zip(group["step"], group[value_column])]
            fig.add_trace(go.Bar(x=group["step"], y=ms(group[value_column]), name=name, legendgroup=f"{row}",
                                 legendgrouptitle_text=titles[row - 1] if index == 0 else None,
                                 marker_color=category_color(str(category), index), hovertext=hovers,
                                 hoverinfo="text"), row=row, col=1)

    categories = [c for c in chosen.columns if c not in ("step", "wall_ns") and chosen[c].abs().sum() > 0]
    long = chosen.melt(id_vars="step", value_vars=categories, var_name="category", value_name="ns")
    long["category"] = pd.Categorical(long["category"], categories=categories)
    long = long.sort_values("category", kind="stable")
    add_bars(1, long, "category", "ns", "", naming=_category_name)
    row = 1
    if gpu:
        row += 1
        families = gpu_families[gpu_families["step"].isin(keep)]
        several = families["device"].nunique() > 1
        families = families.assign(label=(families["device"].astype(str) + " " if several else "")
                                   + families["family"].astype(str))
        per_family = families.groupby(["step", "label"], as_index=False)["time_ns"].sum()
        if gpu_busy is not None and len(gpu_busy):
            idle = gpu_busy[gpu_busy["step"].isin(keep)]
            idle = idle.assign(label=(idle["device"].astype(str) + " " if several else "") + "idle")
            per_family = pd.concat([per_family, idle.rename(columns={"idle_ns": "time_ns"})[
                ["step", "label", "time_ns"]]], ignore_index=True)
        add_bars(row, per_family, "label", "time_ns", "GPU ")
    if cpu:
        row += 1
        add_bars(row, cpu_time[cpu_time["step"].isin(keep)], "category", "time_ns", "CPU ")
    fig.update_layout(template=TEMPLATE, title=title, barmode="stack", bargap=0.05,
                      height=320 + 220 * len(titles), hovermode="closest", margin=dict(l=70, r=30, t=70, b=50),
                      legend=dict(groupclick="toggleitem"))
    for r in range(1, len(titles) + 1):
        fig.update_yaxes(title_text="ms", row=r, col=1)
    fig.update_xaxes(title_text="step", row=len(titles), col=1)
    return fig
