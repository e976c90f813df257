"""An icicle chart (a flame graph drawn top-down) of the engine process's sampled native CPU stacks."""
from __future__ import annotations

from collections import Counter, defaultdict

import pandas as pd
import plotly.graph_objects as go

from gpuscope.plots.style import PALETTE, TEMPLATE, empty, figure, text
from gpuscope.units import share

_LABEL_CHARS = 48
_ROW_PX = 24
# colours of the stacks' categories (gpuscope.collectors.stacks.attribute)
CATEGORY_COLORS = {"cpu_kernel": "#EF553B", "wait": "#BAB0AC", "graph_build": "#00CC96", "sched_split": "#AB63FA",
                   "alloc_reserve": "#FFA15A", "engine_other": "#636EFA", "outside_engine": "#E5E5E5"}


def stack_tree(stacks: pd.DataFrame, *, min_share: float = 0.005) -> tuple[pd.DataFrame, list[str]]:
    """The nodes of the call tree of folded stacks, below the frames every stack shares (the interpreter's and the worker's entry,
    returned second): id (the stack prefix), parent, frame, samples (the node's and its callees'), category (the
    one most of its samples have). Frames holding less than `min_share` of all samples are left out (their
    samples stay in their parent's total)."""
    columns = ["id", "parent", "frame", "samples", "category"]
    if not len(stacks):
        return pd.DataFrame(columns=columns), []
    paths = [(tuple(str(stack).split(";")), int(samples), str(category))
             for stack, samples, category in zip(stacks["stack"], stacks["samples"], stacks["category"])]
    common = 0
    shortest = min(len(path) for path, _, _ in paths)
    while common < shortest - 1 and len({path[common] for path, _, _ in paths}) == 1:
        common += 1
    totals: dict[tuple, int] = defaultdict(int)
    categories: dict[tuple, Counter] = defaultdict(Counter)
    for path, samples, category in paths:
        frames = path[common:]
        for depth in range(1, len(frames) + 1):
            totals[frames[:depth]] += samples
            categories[frames[:depth]][category] += samples
    grand = sum(samples for _, samples, _ in paths)
    kept = [path for path, samples in totals.items() if samples >= min_share * grand]
    tree = pd.DataFrame({
        "id": [";".join(path) for path in kept], "parent": [";".join(path[:-1]) for path in kept],
        "frame": [path[-1] for path in kept], "samples": [totals[path] for path in kept],
        "category": [categories[path].most_common(1)[0][0] for path in kept],
    }, columns=columns)
    return tree, list(paths[0][0][:common])


def cpu_flame(stacks: pd.DataFrame, *, min_share: float = 0.005,
              title: str = "Native CPU stacks of the engine's process") -> go.Figure:
    """Icicle of folded native stacks (Analysis.folded_stacks, from py-spy --native): the callers at the top, each frame as wide as the
    samples in it and its callees, coloured by what the samples were doing (CPU kernels, waits, graph build,
    scheduler, allocator). Click a frame to zoom in."""
    tree, common = stack_tree(stacks, min_share=min_share)
    if not len(tree):
        return empty(figure(title, "", ""), "no native stacks were sampled (gpuscope collect stacks)")
    grand = int(tree.loc[tree["parent"] == "", "samples"].sum())
    labels = [text(f if len(f) <= _LABEL_CHARS else f[:_LABEL_CHARS - 3] + "...") for f in tree["frame"]]
    hovers = [f"{text(frame)}<br>{samples} samples ({share(samples / grand)}), mostly {text(category)}"
              for frame, samples, category in zip(tree["frame"], tree["samples"], tree["category"])]
    colors = [CATEGORY_COLORS.get(c, PALETTE[i % len(PALETTE)]) for i, c in enumerate(tree["category"])]
    depth = int(tree["id"].str.count(";").max()) + 1
    fig = go.Figure(go.Icicle(ids=tree["id"], parents=tree["parent"], labels=labels, values=tree["samples"],
                              branchvalues="total", hovertext=hovers, hoverinfo="text", tiling=dict(orientation="v"),
                              marker=dict(colors=colors), root_color="#f4f4f4"))
    below = f" below {text(common[-1])}" if common else ""
    fig.update_layout(template=TEMPLATE, title=f"{title} ({grand} samples{below})",
                      height=max(480, 120 + _ROW_PX * depth), margin=dict(l=10, r=10, t=60, b=10))
    legend = " ".join(f"<span style='color:{color}'>&#9632;</span> {name}" for name, color in CATEGORY_COLORS.items())
    fig.add_annotation(text=legend, showarrow=False, xref="paper", yref="paper", x=0, y=1.0, yanchor="bottom",
                       xanchor="left", font=dict(size=11))
    return fig
