"""Per-step stacked time: where the decoding thread's wall time went (the hook budget), and, where the collectors
ran, what each GPU did in the step (kernel time by family, idle; a row per GPU) and what the sampled CPU threads
did."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gpuscope.plots.style import TEMPLATE, LegendColors, device_namer, empty, figure, ms, text
from gpuscope.units import duration, share

_BUDGET_NAMES = {"copy": "cross-device copies", "reserve": "scheduler re-reserve",
                 "host_prepare": "host: batch, graph build, inputs", "host_scheduling": "host: scheduler loop",
                 "host_after_compute": "host: outputs", "idle": "idle (program between decode and results)",
                 "unexplained_ns": "unexplained"}


def _category_name(category: str, device) -> str:
    if category.startswith("split:"):
        return f"backend {device(category[6:])[0]}: compute / launches"
    if category.startswith("sync:"):
        return f"sync ({category[5:]})"
    return _BUDGET_NAMES.get(category, category)


def _step_labels(steps: pd.DataFrame | None) -> dict[int, str]:
    if steps is None or not len(steps):
        return {}
    return {int(r.step): f"step {int(r.step)}, {text(r.config)}, context {int(r.context)}"
            for r in steps.itertuples()}


def _busy_share(gpu_busy: pd.DataFrame | None, device: str, keep: set) -> str:
    if gpu_busy is None or not len(gpu_busy):
        return ""
    part = gpu_busy[(gpu_busy["device"].astype(str) == device) & gpu_busy["step"].isin(keep)]
    # the median step's share: a context's first steps pay one-time launches that would weigh on a ratio of sums
    return f": busy {share(part['busy_fraction'].median())} of a step (median)" if len(part) else ""


def step_breakdown(budget: pd.DataFrame, steps: pd.DataFrame | None = None, *,
                   gpu_families: pd.DataFrame | None = None, gpu_busy: pd.DataFrame | None = None,
                   cpu_time: pd.DataFrame | None = None, device_names: pd.DataFrame | None = None,
                   title: str = "Where each step's time went") -> go.Figure:
    """Stacked bars per step (ms). Row 1: the decoding thread's wall time by budget category (Analysis.budget).
    Then, when kernels were collected, one row per GPU: its kernel time by family (kernel_table.family_time_per_step)
    and its idle time (kernel_table.gpu_busy_per_step), the row titled with its busy share; GPUs work at the same
    time, so their kernels are never added up in one bar. Last, when native stacks were sampled: CPU time by category
    (collectors.stacks.time_per_step). steps: the steps to draw (e.g. one configuration's complete steps of one batch
    size), which also label the hover text; None draws every step of the budget. device_names: Analysis.device_names
    (backends named as the configuration names their devices). Each legend entry has a colour of its own; a kernel
    family keeps its colour on every GPU's row."""
    chosen = budget if steps is None else budget[budget["step"].isin(steps["step"])]
    if not len(chosen):
        return empty(figure(title, "step", "time (ms)"), "no complete steps to break down")
    keep = set(chosen["step"])
    device = device_namer(device_names)
    families = gpu_families[gpu_families["step"].isin(keep)] if gpu_families is not None else None
    gpus = list(dict.fromkeys(families["device"].astype(str))) if families is not None else []
    cpu = cpu_time is not None and len(cpu_time) and cpu_time["step"].isin(keep).any()
    titles = ["decoding thread (engine hooks)"] + \
        [f"GPU {device(gpu)[0]} (kernels collected){_busy_share(gpu_busy, gpu, keep)}" for gpu in gpus] + \
        (["CPU threads (native stacks sampled)"] if cpu else [])
    fig = make_subplots(rows=len(titles), cols=1, shared_xaxes=True, subplot_titles=[text(t) for t in titles],
                        vertical_spacing=0.22 / len(titles))
    labels = _step_labels(steps)
    colors = LegendColors()
    legend_entries: set[str] = set()
    titled: set[str] = set()

    def add_bars(row: int, frame: pd.DataFrame, category_column: str, value_column: str, group: str,
                 naming=str, where=lambda category: "", color_prefix: str = "") -> None:
        for category, part in frame.groupby(category_column, sort=False, observed=True):
            name = text(naming(str(category)))
            hovers = [f"{labels.get(int(s), f'step {int(s)}')}<br>{text(where(str(category)))}{name}: {duration(v)}"
                      for s, v in zip(part["step"], part[value_column])]
            entry = f"{group}: {name}"  # its own legend group: one click hides it on every GPU's row
            fig.add_trace(go.Bar(x=part["step"], y=ms(part[value_column]), name=name, legendgroup=entry,
                                 showlegend=entry not in legend_entries,
                                 legendgrouptitle_text=group if group not in titled else None,
                                 marker_color=colors(entry, f"{color_prefix}{category}"), hovertext=hovers,
                                 hoverinfo="text"),
                          row=row, col=1)
            legend_entries.add(entry)
            titled.add(group)

    categories = [c for c in chosen.columns if c not in ("step", "wall_ns") and chosen[c].abs().sum() > 0]
    long = chosen.melt(id_vars="step", value_vars=categories, var_name="category", value_name="ns")
    long["category"] = pd.Categorical(long["category"], categories=categories)
    long = long.sort_values("category", kind="stable")
    add_bars(1, long, "category", "ns", "decoding thread", naming=lambda c: _category_name(c, device),
             where=lambda c: f"{device(c[6:])[1]}<br>" if c.startswith("split:") else "")
    for row, gpu in enumerate(gpus, start=2):
        per_family = families[families["device"].astype(str) == gpu].groupby(
            ["step", "family"], as_index=False, sort=False)["time_ns"].sum()
        if gpu_busy is not None and len(gpu_busy):
            idle = gpu_busy[(gpu_busy["device"].astype(str) == gpu) & gpu_busy["step"].isin(keep)]
            per_family = pd.concat([per_family, idle.assign(family="idle").rename(columns={"idle_ns": "time_ns"})[
                ["step", "family", "time_ns"]]], ignore_index=True)
        add_bars(row, per_family, "family", "time_ns", "GPU kernels", where=lambda c, gpu=gpu: f"{device(gpu)[1]}, ",
                 color_prefix="gpu_")  # a GPU's idle time in grey, as the thread's
    if cpu:
        add_bars(len(titles), cpu_time[cpu_time["step"].isin(keep)], "category", "time_ns", "CPU threads")
    fig.update_layout(template=TEMPLATE, title=title, barmode="stack", bargap=0.05,
                      height=320 + 220 * len(titles), hovermode="closest", margin=dict(l=70, r=30, t=70, b=50),
                      legend=dict(groupclick="togglegroup"))
    for r in range(1, len(titles) + 1):
        fig.update_yaxes(title_text="ms", row=r, col=1)
    fig.update_xaxes(title_text="step", row=len(titles), col=1)
    return fig
