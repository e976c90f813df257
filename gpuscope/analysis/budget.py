"""Step time budget: each step's wall time split into what the decoding thread spent it on.

Measured spans (every one a hook with a duration, nested as the engine nests them):
  split:<backend>   host time inside the backend's splits, minus the copies and syncs inside them: for the CPU
                    backend its kernels, for an asynchronous backend the kernel launches
  copy              cross-device input copies, minus the syncs inside them
  sync:<reason>     backend / event synchronizations by the reason their call site gave
  reserve           scheduler re-reserves (the allocator rebuilding its buffers), minus their syncs
Time between spans, attributed by position relative to the hooks (UBATCH marks a ubatch's graph ready for the
backends):
  host_prepare          up to a ubatch's UBATCH: batch split, graph build or reuse, allocation, inputs
  host_scheduling       from UBATCH through the splits: the scheduler's loop around them
  host_after_compute    after a ubatch's last split: outputs, batch bookkeeping
  idle                  between llama_decode returning and the program asking for the results
unexplained_ns is what is left of the wall time (rounding, work outside the step's thread); it is always shown.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from gpuscope.analysis.columns import text
from gpuscope.trace.steps import join_to_steps

# Kinds of timeline items: spans (with their nesting level), then point markers.
SPLIT, RESERVE, COPY, SYNC, BEGIN, UBATCH, SUBMITTED, WAIT, END = range(9)
KIND_NAMES = ("split", "reserve", "copy", "sync", "begin", "ubatch", "submitted", "wait", "end")
_LEVEL = np.array([1, 1, 2, 3])
GAP_CATEGORIES = ("host_prepare", "host_scheduling", "host_after_compute", "idle")


class _Collector:
    """Span arrays of several event tables, with category names coded into one list."""

    def __init__(self, steps: pd.DataFrame):
        self.steps = steps
        self.names: list[str] = []
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add(self, frame: pd.DataFrame, kind: int, label: str | pd.Series, prefix: str, duration: np.ndarray) -> None:
        if not len(frame):
            return
        if isinstance(label, str):
            codes = np.full(len(frame), len(self.names), np.int64)
            self.names.append(label)
        else:
            column = text(label)
            codes = column.cat.codes.to_numpy().astype(np.int64) + len(self.names)
            self.names += [prefix + c for c in column.cat.categories]
        in_step = join_to_steps(frame, self.steps, by_thread=True)
        keep = in_step.notna().to_numpy()
        end = frame["ts_ns"].to_numpy(np.int64)
        self.parts.append((in_step[keep].to_numpy(np.int64), frame["tid"].to_numpy(np.int64)[keep],
                           (end - duration)[keep], end[keep], np.full(int(keep.sum()), kind, np.int64), codes[keep]))

    def arrays(self) -> tuple[np.ndarray, ...]:
        if not self.parts:
            return tuple(np.empty(0, np.int64) for _ in range(6))
        return tuple(np.concatenate(column) for column in zip(*self.parts))


def _group_starts(groups: np.ndarray) -> np.ndarray:
    starts = np.ones(len(groups), bool)
    starts[1:] = groups[1:] != groups[:-1]
    return starts


def _union_contribution(group: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Each interval's share of the union of its group's intervals: its length minus what earlier intervals of
    the same group (by start) already covered."""
    order = np.lexsort((start, group))
    g, s, e = group[order], start[order], end[order]
    reach = pd.Series(e).groupby(g).cummax().to_numpy()
    previous = np.roll(reach, 1)
    first = _group_starts(g)
    previous[first] = s[first]
    out = np.empty(len(order), np.float64)
    out[order] = np.clip(e - np.maximum(s, previous), 0, None)
    return out


_RELATIVE_BITS = 40  # a span's time within its step: 2^40 ns (18 minutes) on either side of the step's begin


def _nest(step_rank: np.ndarray, origin: np.ndarray, level: np.ndarray, start: np.ndarray,
          end: np.ndarray) -> np.ndarray:
    """Each span's innermost enclosing span of the same step (-1: none), by the child's midpoint. Positions are
    keyed (step, time within the step) so one sorted search covers every step at once."""
    base = step_rank.astype(np.int64) << _RELATIVE_BITS
    half = np.int64(1) << (_RELATIVE_BITS - 1)

    def key(times: np.ndarray) -> np.ndarray:
        return base + np.clip(times - origin + half, 0, 2 * half - 1)

    key_start, key_end, key_middle = key(start), key(end), key(start + (end - start) // 2)
    parent = np.full(len(start), -1, np.int64)
    for child_level in (2, 3):
        for parent_level in range(child_level - 1, 0, -1):  # innermost first
            children = np.flatnonzero((level == child_level) & (parent < 0))
            parents = np.flatnonzero(level == parent_level)
            if not len(children) or not len(parents):
                continue
            parents = parents[np.argsort(key_start[parents], kind="stable")]
            at = np.searchsorted(key_start[parents], key_middle[children], side="right") - 1
            safe = np.maximum(at, 0)
            inside = (at >= 0) & (key_middle[children] <= key_end[parents[safe]])
            parent[children[inside]] = parents[safe[inside]]
    return parent


def spans(steps: pd.DataFrame, sync: pd.DataFrame, copy: pd.DataFrame, split_end: pd.DataFrame,
          sched_reserve: pd.DataFrame) -> pd.DataFrame:
    """Every timed span inside a step, with its `parent` span (-1: none, `top`), and `exclusive_ns`: the time it
    alone accounts for, counted once.

    A span is [ts - duration, ts]; each event's ts is taken when it is written, a little after the duration was
    measured, so spans that follow one another can overlap by that delay and a nested span can stick out of its
    parent by as much. Spans are therefore nested by their midpoint, clipped to their parent (top spans to their
    step), and overlapping siblings count their common time once."""
    collector = _Collector(steps)
    if len(sync):
        collector.add(sync, SYNC, sync["reason"], "sync:", sync["duration_ns"].to_numpy(np.int64))
    if len(copy):
        collector.add(copy, COPY, "copy", "", copy["duration_ns"].to_numpy(np.int64))
    if len(split_end):
        collector.add(split_end, SPLIT, split_end["backend"], "split:", split_end["duration_ns"].to_numpy(np.int64))
    if len(sched_reserve):
        collector.add(sched_reserve, RESERVE, "reserve", "",
                      sched_reserve["sync_ns"].to_numpy(np.int64) + sched_reserve["reserve_ns"].to_numpy(np.int64))
    step, tid, start, end, kind, code = collector.arrays()
    level = _LEVEL[kind] if len(kind) else kind
    by_step = steps.set_index("step")[["t_begin_ns", "t_end_ns"]]
    rank = by_step.index.get_indexer(step)
    window = by_step.to_numpy(np.int64)[rank]
    parent = _nest(rank, window[:, 0], level, start, end)
    # clip to the parent (parents first: a parent's clipped interval bounds its children), top spans to the step
    low, high = start.copy(), end.copy()
    top = parent < 0
    low[top] = np.maximum(low[top], window[top, 0])
    high[top] = np.minimum(high[top], window[top, 1])
    for nested_level in (2, 3):
        nested = (level == nested_level) & ~top
        low[nested] = np.clip(low[nested], low[parent[nested]], high[parent[nested]])
        high[nested] = np.clip(high[nested], low[nested], high[parent[nested]])
    high = np.maximum(high, low)
    names, inverse = np.unique(np.array(collector.names, dtype=object), return_inverse=True) if collector.names \
        else (np.array([], dtype=object), np.empty(0, np.int64))
    group = np.where(top, -1 - step, parent)
    visible = _union_contribution(group, low, high)
    covered = np.bincount(parent[~top], weights=visible[~top], minlength=len(step))
    return pd.DataFrame({
        "step": step, "tid": tid, "start": low, "end": high,
        "kind": pd.Categorical.from_codes(kind, categories=KIND_NAMES),
        "category": pd.Categorical.from_codes(inverse[code] if len(code) else code, categories=names),
        "parent": parent, "top": top, "exclusive_ns": np.clip(visible - covered, 0, None),
    })


def _gaps(done: pd.DataFrame, top: pd.DataFrame, ubatch: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Time on the step's thread between the top-level spans, by position: (step, gap category code, ns)."""
    step_ids = done["step"].to_numpy(np.int64)
    begin = done["t_begin_ns"].to_numpy(np.int64)
    end = done["t_end_ns"].to_numpy(np.int64)
    submitted_at = begin + done["submit_ns"].to_numpy(np.int64)
    wait_begin = end - done["wait_ns"].fillna(0).to_numpy(np.int64)
    ub = ubatch[np.isin(ubatch["step"].to_numpy(np.int64), step_ids)] if len(ubatch) else ubatch
    ub_steps = ub["step"].to_numpy(np.int64) if len(ub) else np.empty(0, np.int64)
    ub_ts = ub["ts_ns"].to_numpy(np.int64) if len(ub) else np.empty(0, np.int64)
    markers = [(step_ids, begin, BEGIN), (ub_steps, ub_ts, UBATCH), (step_ids, submitted_at, SUBMITTED),
               (step_ids, wait_begin, WAIT), (step_ids, end, END)]
    steps_col = np.concatenate([m[0] for m in markers] + [top["step"].to_numpy(np.int64)])
    start = np.concatenate([m[1] for m in markers] + [top["start"].to_numpy(np.int64)])
    stop = np.concatenate([m[1] for m in markers] + [top["end"].to_numpy(np.int64)])
    kind = np.concatenate([np.full(len(m[0]), m[2], np.int64) for m in markers] + [top["kind"].cat.codes.to_numpy()
                                                                                    .astype(np.int64)])
    order = np.lexsort((stop, start, steps_col))
    steps_col, start, stop, kind = steps_col[order], start[order], stop[order], kind[order]
    first = _group_starts(steps_col)
    reach = pd.Series(stop).groupby(steps_col).cummax().to_numpy()
    previous = np.roll(reach, 1)
    gap = np.where(first, 0, np.clip(start - previous, 0, None))
    # where a gap sits: after which marker (the step's begin, a ubatch ready for compute), and whether that
    # ubatch's splits have begun; every step's items start with its BEGIN marker
    is_split = (kind == SPLIT).astype(np.int64)
    cumulative = np.cumsum(is_split)
    splits_before = cumulative - is_split - np.repeat(cumulative[first] - is_split[first], np.diff(
        np.append(np.flatnonzero(first), len(first))))
    is_marker = (kind == BEGIN) | (kind == UBATCH)
    marker_at = np.maximum.accumulate(np.where(is_marker, np.arange(len(kind)), -1))
    before = np.roll(marker_at, 1)
    before[first] = np.flatnonzero(first)
    last_marker = kind[before]
    computed = splits_before > splits_before[before]
    submitted = submitted_at[np.searchsorted(step_ids, steps_col)] if np.all(np.diff(step_ids) > 0) else \
        pd.Series(submitted_at, index=step_ids).reindex(steps_col).to_numpy(np.int64)
    after_submit = start > submitted
    category = np.select(
        [after_submit | (kind == WAIT) | (kind == END), kind == UBATCH,
         (last_marker == BEGIN) & (kind != SUBMITTED), computed & (kind != SPLIT)],
        [3, 0, 0, 2], default=1)
    return steps_col, category, gap


def step_budget(steps: pd.DataFrame, sync: pd.DataFrame, copy: pd.DataFrame, split_end: pd.DataFrame,
                sched_reserve: pd.DataFrame, ubatch: pd.DataFrame) -> pd.DataFrame:
    """One row per complete step: wall_ns, then nanoseconds per category (see the module's docstring) and
    unexplained_ns. Categories absent from the trace are absent as columns."""
    done = steps[steps["complete"] & steps["wall_ns"].notna()] if len(steps) else steps
    if not len(done):
        return pd.DataFrame(columns=["step", "wall_ns", "unexplained_ns"])
    done = done.sort_values("step", kind="stable")
    all_spans = spans(done, sync, copy, split_end, sched_reserve)
    step_ids = done["step"].to_numpy(np.int64)
    span_names = list(all_spans["category"].cat.categories) if len(all_spans) else []
    names = span_names + list(GAP_CATEGORIES)
    span_codes = all_spans["category"].cat.codes.to_numpy().astype(np.int64) if len(all_spans) else \
        np.empty(0, np.int64)
    gap_steps, gap_codes, gap_ns = _gaps(done, all_spans[all_spans["top"].to_numpy(bool)], ubatch)
    rows = np.searchsorted(step_ids, np.concatenate([all_spans["step"].to_numpy(np.int64), gap_steps]))
    codes = np.concatenate([span_codes, gap_codes + len(span_names)])
    values = np.concatenate([all_spans["exclusive_ns"].to_numpy(np.float64), gap_ns.astype(np.float64)])
    totals = np.bincount(rows * len(names) + codes, weights=values, minlength=len(step_ids) * len(names))
    table = pd.DataFrame(totals.reshape(len(step_ids), len(names)).round().astype(np.int64), columns=names)
    table = table.loc[:, (table != 0).any(axis=0)]
    order = sorted(table.columns, key=lambda c: (c.startswith("host") or c == "idle", c))
    table = table[order]
    table.insert(0, "wall_ns", done["wall_ns"].to_numpy(np.float64))
    table.insert(0, "step", step_ids)
    table["unexplained_ns"] = table["wall_ns"] - table[order].sum(axis=1)
    return table


def budget_summary(budget: pd.DataFrame) -> pd.DataFrame:
    """Total nanoseconds and share of all steps' wall time per category (unexplained included)."""
    if not len(budget):
        return pd.DataFrame(columns=["category", "ns", "share"])
    totals = budget.drop(columns=["step", "wall_ns"]).sum()
    wall = budget["wall_ns"].sum()
    return pd.DataFrame({"category": totals.index, "ns": totals.to_numpy(np.float64),
                         "share": totals.to_numpy(np.float64) / wall if wall else np.nan}) \
        .sort_values("ns", ascending=False, kind="stable").reset_index(drop=True)


def collector_budget(steps: pd.DataFrame, cpu_time: pd.DataFrame | None, gpu_families: pd.DataFrame | None,
                     gpu_busy: pd.DataFrame | None) -> pd.DataFrame:
    """Per step: `cpu:<category>` from the sampled stacks' time per step and `gpu:<family>` / `gpu_busy_ns` from
    the kernels' time per step, for the collectors that ran (their joins: gpuscope.analysis.cpu_stacks and
    gpuscope.analysis.kernels)."""
    table = pd.DataFrame({"step": steps["step"].to_numpy(np.int64), "wall_ns": steps["wall_ns"].to_numpy(np.float64)})
    if not len(steps):
        return table
    parts = []
    if cpu_time is not None and len(cpu_time):
        parts.append(cpu_time.pivot_table(index="step", columns="category", values="time_ns", aggfunc="sum")
                     .add_prefix("cpu:"))
    if gpu_families is not None and len(gpu_families):
        parts.append(gpu_families.pivot_table(index="step", columns="family", values="time_ns", aggfunc="sum")
                     .add_prefix("gpu:"))
        parts.append(gpu_busy.groupby("step")["busy_ns"].sum().rename("gpu_busy_ns").to_frame())
    for part in parts:
        table = table.join(part, on="step")
    return table.fillna(0)
