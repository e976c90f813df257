"""The doctor's text around its findings: what the trace holds and the table of its configurations."""
from __future__ import annotations

import pandas as pd

from gpuscope.units import duration, share, terminal_width, text_table, times, wrap


def summary_lines(analysis, width: int | None = None) -> list[str]:
    """No line wider than `width` (default: the terminal's)."""
    width = width or terminal_width()
    steps = analysis.complete_steps
    lines = [f"trace: {analysis.trace.path}", f"steps: {len(analysis.steps)} ({len(steps)} complete)"]
    if len(steps) and len(analysis.configs) > 1:
        lines.append("step time: per configuration above; context "
                     f"{int(steps['context'].min())}..{int(steps['context'].max())}")
    elif len(steps):
        lines.append(f"step time: median {duration(steps['wall_ns'].median())}, "
                     f"context {int(steps['context'].min())}..{int(steps['context'].max())}")
        top = analysis.budget_summary.head(5)
        lines.append("budget: " + ", ".join(f"{r.category} {share(r.share)}" for r in top.itertuples()))
    if analysis.model is None:
        lines.append("bandwidth floor: not computed (the trace records no model byte profile: pass --model)")
    elif not analysis.bandwidth["bytes_per_s"].notna().any():
        lines.append("bandwidth floor: not computed (no known bandwidth for these devices: pass --bandwidth "
                     "DEVICE=GBPS or --measure-bandwidth)")
    return [wrapped for line in lines for wrapped in wrap(line, width)]


def config_lines(analysis, width: int | None = None, rows: int | None = None) -> list[str]:
    """The configurations side by side, fastest first at each depth (only for a trace of several), in `width`
    columns (default: the terminal's) and, where given, `rows` rows."""
    table = analysis.config_table
    if len(analysis.configs) < 2 or not len(table):
        return []
    # the columns named with their units, which is how text_table formats them
    view = pd.DataFrame({
        "depth": table["depth"], "configuration": table["config"], "per_token_ms": table["ms_per_token"],
        "tokens_per_s": table["tokens_per_s"],
        "vs fastest": ["fastest" if rank == 1 else f"{times(slowdown)} slower"
                       for rank, slowdown in zip(table["rank"], table["slowdown"])],
        "growth_per_1k_cells_ms": table["growth_ms_per_1k"], "floor_share": table["floor_share"]})
    return text_table(view, width=width or terminal_width(), rows=rows)
