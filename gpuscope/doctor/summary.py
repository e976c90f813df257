"""The doctor's text around its findings: what the trace holds and the table of its configurations."""
from __future__ import annotations


def summary_lines(analysis) -> list[str]:
    steps = analysis.complete_steps
    lines = [f"trace: {analysis.trace.path}", f"steps: {len(analysis.steps)} ({len(steps)} complete)"]
    if len(steps) and len(analysis.configs) > 1:
        lines.append("step time: per configuration above; context "
                     f"{int(steps['context'].min())}..{int(steps['context'].max())}")
    elif len(steps):
        lines.append(f"step time: median {steps['wall_ns'].median() / 1e6:.3g} ms, "
                     f"context {int(steps['context'].min())}..{int(steps['context'].max())}")
        top = analysis.budget_summary.head(5)
        lines.append("budget: " + ", ".join(f"{r.category} {r.share:.0%}" for r in top.itertuples()))
    if analysis.model is None:
        lines.append("bandwidth floor: not computed (the trace records no model byte profile: pass --model)")
    elif not analysis.bandwidth["bytes_per_s"].notna().any():
        lines.append("bandwidth floor: not computed (no known bandwidth for these devices: pass --bandwidth "
                     "DEVICE=GBPS or --measure-bandwidth)")
    return lines


def config_lines(analysis) -> list[str]:
    """The configurations side by side, fastest first at each depth (only for a trace of several)."""
    table = analysis.config_table
    if len(analysis.configs) < 2 or not len(table):
        return []
    width = max(len(str(c)) for c in table["config"])
    lines = [f"{'depth':>6}  {'configuration':<{width}}  {'ms/token':>9}  {'tokens/s':>9}  {'vs fastest':>10}  "
             f"{'ms/1k ctx':>9}  {'of floor':>8}"]
    for row in table.itertuples():
        growth = f"{row.growth_ms_per_1k:9.3g}" if row.growth_ms_per_1k == row.growth_ms_per_1k else f"{'-':>9}"
        floor = f"{row.floor_share:8.0%}" if row.floor_share == row.floor_share else f"{'-':>8}"
        versus = "fastest" if row.rank == 1 else f"{row.slowdown:.3g}x"
        lines.append(f"{row.depth:>6}  {row.config:<{width}}  {row.ms_per_token:9.3g}  {row.tokens_per_s:9.3g}  "
                     f"{versus:>10}  {growth}  {floor}")
    return lines
