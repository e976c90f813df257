"""Plotly figures of gpuscope's analyses: each function takes analysis DataFrames and returns a figure.

  step_time_vs_context   steps per configuration against context, fits, bandwidth floor, event markers
  step_breakdown         per-step stacked time: hook budget, GPU kernels by family, sampled CPU work
  timeline               every lane of a trace on one clock: steps, splits, syncs, copies, allocator, FA plans,
                         kernels per GPU, memory held, with bands per configuration and depth
  memory_over_time       bytes held per device by owner
  allocator_timeline     reallocations, re-reserves, buffer (re)allocations over time
  fa_plan_table          the FlashAttention plans, NONE plans shaded
  copy_matrix            cross-device copies per step, source by destination
  cpu_flame              icicle of native CPU stacks
  before_after           two runs over context, and their difference with its confidence band
  comparison_figures     before_after and each run's step time against context, on shared axes

`standard_figures(analysis)` makes every figure an Analysis has data for (what reports and notebooks show): step time
against context for the whole trace, and each configuration's own figures (`config_figures`, `by_config`).
"""
from __future__ import annotations

from gpuscope.plots.allocator import allocator_timeline
from gpuscope.plots.breakdown import step_breakdown
from gpuscope.plots.compare import before_after, comparison_figures
from gpuscope.plots.context import event_markers, step_time_vs_context
from gpuscope.plots.flame import cpu_flame
from gpuscope.plots.memory import memory_over_time
from gpuscope.plots.tables import copy_matrix, fa_plan_table
from gpuscope.plots.timeline import timeline

__all__ = ["allocator_timeline", "before_after", "by_config", "comparison_figures", "config_figures", "copy_matrix",
           "cpu_flame", "event_markers", "fa_plan_table", "memory_over_time", "standard_figures", "step_breakdown",
           "step_time_figure", "step_time_vs_context", "timeline", "timeline_figure"]


def _batch_size(steps) -> int | None:
    """The batch size to plot against context: single-token decode when the run has it, else the commonest."""
    if not len(steps):
        return None
    sizes = steps["n_tokens"].value_counts()
    return 1 if 1 in sizes.index else int(sizes.index[0])


def step_time_figure(analysis):
    """Step time against context of every configuration of a trace (a panel each), with their medians and bands."""
    steps = analysis.complete_steps
    return step_time_vs_context(steps, analysis.fits, analysis.floor,
                                event_markers(analysis.step_events, analysis.syncs, steps),
                                bands=analysis.step_time_bands, n_tokens=_batch_size(steps))


def timeline_figure(analysis):
    """Every lane of a trace on one clock, bands per configuration and depth."""
    return timeline(analysis.steps, analysis.bands, analysis.trace.tables, analysis.buffers, t0_ns=analysis.t0_ns)


def config_figures(analysis, t0_ns: int | None = None) -> dict:
    """The figures of one configuration's steps and events (an Analysis of one configuration: Analysis.of_config):
    always the step breakdown (one row per GPU) and memory; the allocator timeline, FA plans, copy matrix and CPU
    stacks when its events hold such. t0_ns: the whole trace's time origin (default: this analysis's)."""
    t0_ns = analysis.t0_ns if t0_ns is None else t0_ns
    steps = analysis.complete_steps
    n_tokens = _batch_size(steps)
    chosen = steps[steps["n_tokens"] == n_tokens] if n_tokens is not None else steps
    names = analysis.device_names
    figures = {"step_breakdown": step_breakdown(analysis.budget, chosen, gpu_families=analysis.gpu_families,
                                                gpu_busy=analysis.gpu_busy, cpu_time=analysis.cpu_time,
                                                device_names=names),
               "memory_over_time": memory_over_time(analysis.buffers, t0_ns=t0_ns, device_names=names)}
    if any(len(analysis.table(kind)) for kind in ("gallocr_realloc", "sched_reserve", "gallocr_buffer")):
        figures["allocator_timeline"] = allocator_timeline(
            analysis.table("gallocr_realloc"), analysis.table("sched_reserve"), analysis.table("gallocr_buffer"),
            realloc_steps=analysis.in_step("gallocr_realloc"), reserve_steps=analysis.in_step("sched_reserve"),
            t0_ns=t0_ns)
    if len(analysis.fa_plans):
        figures["fa_plans"] = fa_plan_table(analysis.fa_plans)
    if len(analysis.copy_pairs):
        figures["copy_matrix"] = copy_matrix(analysis.copy_pairs, device_names=names)
    if analysis.folded_stacks is not None:
        figures["cpu_stacks"] = cpu_flame(analysis.folded_stacks)
    return figures


def by_config(analysis) -> list[tuple[str | None, dict]]:
    """(configuration, its config_figures) for each configuration of a trace, in the order they ran; one trace of
    one configuration gives (None, figures)."""
    if len(analysis.configs) <= 1:
        return [(None, config_figures(analysis))]
    return [(config, config_figures(analysis.of_config(config), analysis.t0_ns)) for config in analysis.configs]


def standard_figures(analysis) -> dict:
    """The figures of one trace, by name: the timeline, step time against context of every configuration, then each
    configuration's own (config_figures), named `<figure>` when the trace has one configuration and
    `<figure>: <configuration>` when it has several (a sweep's configurations are never averaged or piled up).
    Every time axis counts from the trace's first event (analysis.t0_ns)."""
    figures = {"timeline": timeline_figure(analysis), "step_time_vs_context": step_time_figure(analysis)}
    for config, figures_of_config in by_config(analysis):
        figures.update({name if config is None else f"{name}: {config}": fig
                        for name, fig in figures_of_config.items()})
    return figures
