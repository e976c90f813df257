"""One timeline of a trace: what the engine did and waited for, lane by lane, on one clock (seconds since the
trace's first event, Analysis.t0_ns, the origin of every time axis), with a band per configuration's run.

Lanes, top to bottom: configuration, depth, decode steps, scheduler splits, syncs, cross-device copies, allocator
events, FlashAttention plans, one lane of kernels per GPU where the kernel profiler ran; below them, on the same
x axis, the bytes held per memory location. A lane with more than `MAX_SPANS` items is merged into that many spans,
cut at its widest gaps, each saying what it holds, and the title says which lanes were merged (the Perfetto
export keeps every event): a report stays a few MiB whatever the trace holds. `fig.layout.meta` records the lanes,
the merges and the origin."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gpuscope.plots.memory import held_over_time
from gpuscope.plots.style import PALETTE, TEMPLATE, TIME_AXIS, config_colors, seconds_since, text
from gpuscope.trace.ggml_names import type_name
from gpuscope.units import MIB, duration, number, size

MAX_SPANS = 1500  # per lane: the two-GPU tensor split (57,410 kernels, 8,528 copies) drawn item by item is 8.8 MiB
# of figure JSON, bounded so 0.96 MiB
UNKNOWN_COLOR = "#8c8c8c"
NO_KERNEL_COLOR = "#d62728"
# group: the legend entry; tint: the group whose colour it takes (a merged span, its main group's)
_ITEM_COLUMNS = ["lane", "group", "tint", "start_ns", "end_ns", "hover", "label"]
MERGED = ", merged"


def _items(lane: str, group, start, end, hover, label=None, tint=None) -> pd.DataFrame:
    n = len(start)
    return pd.DataFrame({"lane": lane, "group": group, "tint": group if tint is None else tint,
                         "start_ns": np.asarray(start, np.int64), "end_ns": np.asarray(end, np.int64),
                         "hover": hover, "label": label if label is not None else [""] * n})


def _at(ts_ns, t0_ns: int) -> list[str]:
    return [f"at {number(s)} s" for s in seconds_since(ts_ns, t0_ns)]


def _lines(*columns) -> list[str]:
    """Hover text from columns of already escaped, formatted lines."""
    return ["<br>".join(parts) for parts in zip(*columns)]


def _band_items(bands: pd.DataFrame) -> list[pd.DataFrame]:
    parts = []
    for level, lane in (("configuration", "configuration"), ("depth", "depth")):
        part = bands[bands["level"] == level]
        if not len(part):
            continue
        names = [text(c) for c in part["config"]]
        what = names if level == "configuration" else [f"{n}, depth {d}" for n, d in zip(names, part["depth"])]
        hover = _lines(what, [f"steps {a}..{b} ({n})" for a, b, n in zip(part["first_step"], part["last_step"],
                                                                       part["steps"])],
                       [duration(e - s) for s, e in zip(part["start_ns"], part["end_ns"])])
        label = names if level == "configuration" else [f"depth {d}" for d in part["depth"]]
        parts.append(_items(lane, part["config"].astype(str).to_numpy(), part["start_ns"], part["end_ns"], hover,
                            label))
    return parts


def _step_items(steps: pd.DataFrame, t0_ns: int) -> list[pd.DataFrame]:
    if not len(steps):
        return []
    end = steps["t_end_ns"].fillna(steps["t_begin_ns"])
    hover = _lines([f"step {s}: {text(c)}" for s, c in zip(steps["step"], steps["config"])],
                   [f"{t} token(s) at context {c}" for t, c in zip(steps["n_tokens"], steps["context"])],
                   [duration(w) for w in steps["wall_ns"]], _at(steps["t_begin_ns"], t0_ns))
    return [_items("steps", steps["config"].astype(str).to_numpy(), steps["t_begin_ns"], end, hover)]


def _ended(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of events stamped when they ended (ts_ns) with how long they took (duration_ns)."""
    end = frame["ts_ns"].to_numpy(np.int64)
    return end - frame["duration_ns"].fillna(0).to_numpy(np.int64), end


def _event_items(tables: dict, t0_ns: int) -> list[pd.DataFrame]:
    parts = []
    splits = tables.get("split_end", pd.DataFrame())
    if len(splits):
        start, end = _ended(splits)
        backend = splits["backend"].astype(str)
        hover = _lines([f"split {s} on {text(b)}" for s, b in zip(splits["split_id"], backend)],
                       [duration(d) for d in splits["duration_ns"]], _at(start, t0_ns))
        parts.append(_items("splits", backend.to_numpy(), start, end, hover))
    syncs = tables.get("sync", pd.DataFrame())
    if len(syncs):
        start, end = _ended(syncs)
        reason = syncs["reason"].astype(str)
        hover = _lines([f"sync: {text(r)} on {text(b)}" for r, b in zip(reason, syncs["backend"])],
                       [f"{duration(d)}, {text(w)}" for d, w in zip(syncs["duration_ns"], syncs["what"])],
                       _at(start, t0_ns))
        parts.append(_items("syncs", ("sync: " + reason).to_numpy(), start, end, hover))
    copies = tables.get("copy", pd.DataFrame())
    if len(copies):
        start, end = _ended(copies)
        pair = copies["src_device"].astype(str) + " -> " + copies["dst_device"].astype(str)
        hover = _lines([f"copy {text(p)}: {text(t)}" for p, t in zip(pair, copies["tensor"])],
                       [f"{size(b)} in {duration(d)}" for b, d in zip(copies["bytes"], copies["duration_ns"])],
                       _at(start, t0_ns))
        parts.append(_items("copies", pair.to_numpy(), start, end, hover))
    for kind, group, detail in (
            ("gallocr_realloc", lambda f: "reallocation: " + f["reason"].astype(str),
             lambda f: [f"{text(t)}: needs {size(n)}, slot {size(m)}"
                        for t, n, m in zip(f["tensor"], f["size_needed"], f["size_max"])]),
            ("sched_reserve", lambda f: "re-reserve: " + f["trigger"].astype(str),
             lambda f: [f"re-reserve of {n} nodes, {s} splits: {duration(r)}"
                        for n, s, r in zip(f["n_nodes"], f["n_splits"], f["reserve_ns"])]),
            ("gallocr_buffer", lambda f: pd.Series("buffer (re)allocation", index=f.index),
             lambda f: [f"{text(b)}: {size(o)} -> {size(n)}" for b, o, n in zip(f["buft"], f["old_size"],
                                                                                   f["new_size"])])):
        frame = tables.get(kind, pd.DataFrame())
        if len(frame):
            groups = group(frame)
            hover = _lines([text(g) for g in groups], detail(frame), _at(frame["ts_ns"], t0_ns))
            parts.append(_items("allocator", groups.to_numpy(), frame["ts_ns"], frame["ts_ns"], hover))
    plans = tables.get("fa_plan", pd.DataFrame())
    if len(plans):
        kernel = plans["kernel"].astype(str)
        hover = _lines([f"FA plan on {text(d)}: {'no kernel' if k == 'none' else text(k)}"
                        for d, k in zip(plans["device"], kernel)],
                       [f"head {hk}/{hv}, K {type_name(tk)}, V {type_name(tv)}, {q} query token(s), {n} KV cells"
                        for hk, hv, tk, tv, q, n in zip(plans["head_dim_k"], plans["head_dim_v"], plans["type_k"],
                                                        plans["type_v"], plans["q_tokens"], plans["n_kv"])],
                       [f"{text(c)}, {text(r)}" for c, r in zip(plans["caller"], plans["reason"])],
                       _at(plans["ts_ns"], t0_ns))
        parts.append(_items("FA plans", ("FA " + kernel).to_numpy(), plans["ts_ns"], plans["ts_ns"], hover))
    kernels = tables.get("kernels", pd.DataFrame())
    for device, frame in (kernels.groupby(kernels["device"].astype(str), sort=True) if len(kernels) else []):
        start = frame["ts_ns"].to_numpy(np.int64)  # the profiler stamps a kernel where it started
        hover = _lines([text(k) for k in frame["kernel"]],
                       [f"{text(device)} stream {s}, {duration(d)}" for s, d in zip(frame["stream"],
                                                                                     frame["duration_ns"])],
                       _at(start, t0_ns))
        parts.append(_items(f"{device} kernels", frame["family"].astype(str).to_numpy(), start,
                            start + frame["duration_ns"].to_numpy(np.int64), hover))
    return parts


def bounded(items: pd.DataFrame, max_spans: int) -> tuple[pd.DataFrame, dict[str, list[int]]]:
    """Every lane with more than max_spans (at least 2) items merged into max_spans spans, cut at the widest gaps
    between its items: each span says how many items it holds and of which groups, most time first, and is drawn
    as its main group merged. Returns the items and, per merged lane, [items, spans]."""
    merged: dict[str, list[int]] = {}
    kept = []
    for lane, part in items.groupby("lane", sort=False):
        if len(part) <= max_spans:
            kept.append(part)
            continue
        # cut at the widest gaps between items: merges happen where items crowd, idle time stays visible
        part = part.sort_values("start_ns", kind="stable")
        gaps = part["start_ns"].to_numpy()[1:] - np.maximum.accumulate(part["end_ns"].to_numpy())[:-1]
        cuts = np.zeros(len(part), np.int64)
        cuts[1 + np.argpartition(-gaps, max_spans - 2)[:max_spans - 1]] = 1
        part = part.assign(bin=np.cumsum(cuts), took=part["end_ns"] - part["start_ns"])
        alone = part.groupby("bin")["bin"].transform("size") == 1
        kept.append(part.loc[alone, _ITEM_COLUMNS])  # a span of one item stays that item
        part = part[~alone]
        by_bin = part.groupby("bin", sort=True)
        spans = by_bin.agg(start_ns=("start_ns", "min"), end_ns=("end_ns", "max"), n=("took", "size"),
                           took=("took", "sum"))
        top = (part.groupby(["bin", "group"], sort=False)["took"].agg(["size", "sum"]).reset_index()
               .sort_values(["bin", "sum", "size"], ascending=[True, False, False]))
        main = top.groupby("bin", sort=True)["group"].first()
        top = top.groupby("bin", sort=False).head(3)
        said = pd.Series([f"{text(name)} {count}" for name, count in zip(top["group"], top["size"])],
                         index=top["bin"]).groupby(level=0).agg(", ".join)
        took = spans["took"].where(spans["took"] > 0)
        hover = _lines([f"{n} {text(lane)} merged (more than {max_spans} in the lane)" for n in spans["n"]],
                       said.reindex(spans.index).fillna("").tolist(),
                       [f"{duration(t)} summed, within {duration(e - s)}" if pd.notna(t) else duration(e - s)
                        for t, s, e in zip(took, spans["start_ns"], spans["end_ns"])])
        kept.append(_items(lane, (main + MERGED).to_numpy(), spans["start_ns"], spans["end_ns"], hover,
                           tint=main.to_numpy()))
        merged[lane] = [int(len(part) + alone.sum()), int(len(spans) + alone.sum())]
    return (pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(columns=_ITEM_COLUMNS)), merged


def _colors(items: pd.DataFrame, configs: list[str]) -> dict[tuple, str]:
    """One colour per (lane, group): configurations keep theirs, FA plans with no kernel are red, and every other
    group its own colour after the configurations' (none repeats within the palette)."""
    by_config = config_colors(configs)
    colors, index = {}, len(by_config)
    for lane, group in dict.fromkeys(zip(items["lane"], items["group"])):
        if lane in ("configuration", "depth", "steps"):
            colors[(lane, group)] = by_config.get(group, UNKNOWN_COLOR)
        elif group == "FA none":
            colors[(lane, group)] = NO_KERNEL_COLOR
        else:
            colors[(lane, group)] = PALETTE[index % len(PALETTE)]
            index += 1
    return colors


def timeline(steps: pd.DataFrame, bands: pd.DataFrame, tables: dict, buffers: pd.DataFrame, *, t0_ns: int,
             max_spans: int = MAX_SPANS, title: str = "Timeline") -> go.Figure:
    """The lanes of a trace on one clock (see the module's docstring), zoomable along time.

    steps: Analysis.steps; bands: Analysis.bands; tables: the trace's tables (split_end, sync, copy,
    gallocr_realloc, sched_reserve, gallocr_buffer, fa_plan, kernels: each lane drawn where its table has rows);
    buffers: Analysis.buffers; t0_ns: Analysis.t0_ns."""
    parts = [*_band_items(bands), *_step_items(steps, t0_ns), *_event_items(tables, t0_ns)]
    every = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=_ITEM_COLUMNS)
    colors = _colors(every, [str(c) for c in bands["config"]] if len(bands) else [])
    items, merged = bounded(every, max_spans)
    lanes = list(dict.fromkeys(items["lane"]))
    held = held_over_time(buffers)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        row_heights=[max(len(lanes), 1) * 30, 180])
    titled = set()
    for (lane, group, tint), part in items.groupby(["lane", "group", "tint"], sort=False):
        start = seconds_since(part["start_ns"], t0_ns)
        color = colors[(lane, tint)]
        common = dict(name=text(group), legendgroup=lane, hovertext=part["hover"].tolist(), hoverinfo="text",
                      opacity=0.55 if group.endswith(MERGED) else 1.0,
                      showlegend=lane not in ("configuration", "depth"),
                      legendgrouptitle_text=None if lane in titled else text(lane))
        titled.add(lane)
        if (part["end_ns"] > part["start_ns"]).any() or lane in ("configuration", "depth", "steps"):
            fig.add_trace(go.Bar(
                y=[lane] * len(part), x=seconds_since(part["end_ns"], t0_ns) - start, base=start,
                orientation="h", marker=dict(color=color, line=dict(width=0)), width=0.8,
                text=part["label"].tolist(), textposition="inside", insidetextanchor="middle",
                textfont=dict(color="#fff", size=11), **common), row=1, col=1)
        else:
            fig.add_trace(go.Scatter(
                y=[lane] * len(part), x=start, mode="markers",
                marker=dict(color=color, size=9, symbol="diamond", line=dict(width=0.5, color="#333")),
                **common), row=1, col=1)
    for location, part in (held.groupby("location", sort=False) if len(held) else []):
        owners = [c for c in part.columns if c not in ("ts_ns", "location")]
        values = part[owners].fillna(0)
        total = values.sum(axis=1).to_numpy(np.float64)
        hover = _lines([f"{text(location)}: {size(t)}" for t in total],
                       [", ".join(f"{text(o)} {size(v)}" for o, v in row.items() if v) for _, row in
                        values.iterrows()], _at(part["ts_ns"], t0_ns))
        fig.add_trace(go.Scatter(x=seconds_since(part["ts_ns"], t0_ns), y=total / MIB, mode="lines",
                                 line_shape="hv", name=text(location), legendgroup="memory",
                                 legendgrouptitle_text=None if "memory" in titled else "memory held",
                                 hovertext=hover, hoverinfo="text"), row=2, col=1)
        titled.add("memory")
    configurations = bands[bands["level"] == "configuration"] if len(bands) else bands
    for band in configurations.itertuples():
        fig.add_vrect(x0=(band.start_ns - t0_ns) / 1e9, x1=(band.end_ns - t0_ns) / 1e9, line_width=0,
                      fillcolor=colors.get(("configuration", str(band.config)), UNKNOWN_COLOR), opacity=0.08,
                      layer="below")
    subtitle = (f"<br><sup>merged where items crowd (more than {max_spans} in a lane): "
                f"{', '.join(text(lane) for lane in merged)}; the hover says how many, Perfetto shows each</sup>"
                if merged else "<br><sup>drag to zoom along time, double-click to see it all</sup>")
    fig.update_layout(template=TEMPLATE, title=f"{text(title)}{subtitle}", barmode="overlay", hovermode="closest",
                      height=160 + 30 * max(len(lanes), 1) + 220, legend=dict(groupclick="toggleitem"),
                      margin=dict(l=130, r=30, t=80, b=50), dragmode="zoom",
                      meta={"lanes": lanes, "merged": merged, "t0_ns": int(t0_ns), "max_spans": int(max_spans)})
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=lanes[::-1], fixedrange=True,
                     row=1, col=1)
    fig.update_yaxes(title_text="MiB held", rangemode="tozero", fixedrange=True, row=2, col=1)
    fig.update_xaxes(title_text=TIME_AXIS, row=2, col=1)
    return fig
