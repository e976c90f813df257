"""Step time against context: per configuration and batch size, a robust line step time = a + b * context with
confidence intervals, the breakpoints where its level or slope changes (with what happened there), and the
memory-bandwidth floor: (weight bytes + KV bytes read at that context) / device bandwidth, with the efficiency
floor / actual."""
from __future__ import annotations

import numpy as np
import pandas as pd

from gpuscope.analysis.memory import HOST
from gpuscope.trace.model_bytes import ModelBytes
from gpuscope.analysis.stats import bin_medians, breakpoints, robust_line

GROUP = ["config", "n_tokens"]
MIN_STEPS_FOR_FIT = 8


def _fit_steps(steps: pd.DataFrame) -> pd.DataFrame:
    """The steps a context fit speaks about: complete, timed, and not cold starts (one-time costs)."""
    return steps[steps["complete"] & steps["wall_ns"].notna() & ~steps["cold_start"]]


def fit_groups(steps: pd.DataFrame) -> pd.DataFrame:
    """One row per (configuration, batch size): the robust fit of wall time (ns) on context (cells), and a second
    fit over the upper half of the contexts measured (`long_*`): how fast a step grows where the context is long,
    which a line over the whole range averages away when the cost grows faster with context."""
    rows = []
    for (config, n_tokens), group in _fit_steps(steps).groupby(GROUP, sort=True):
        context = group["context"].to_numpy()
        wall = group["wall_ns"].to_numpy()
        fit = robust_line(context, wall) if len(group) >= MIN_STEPS_FOR_FIT else None
        middle = (context.min() + context.max()) / 2
        upper = context >= middle
        # the upper half must span a quarter of the range: the steps of one depth of a depth sweep (32768..32800)
        # give a slope of their own noise and warm-up, not of the context
        spread = np.ptp(context[upper]) >= 0.25 * np.ptp(context)  # the maximum is always in the upper half
        long_fit = robust_line(context[upper], wall[upper]) \
            if upper.sum() >= MIN_STEPS_FOR_FIT and spread and fit is not None else None
        rows.append({
            "config": config, "n_tokens": int(n_tokens), "steps": len(group),
            "context_min": int(context.min()), "context_max": int(context.max()),
            "median_wall_ns": float(np.median(wall)),
            "intercept_ns": fit.intercept if fit else np.nan,
            "intercept_ci_low": fit.intercept_ci[0] if fit else np.nan,
            "intercept_ci_high": fit.intercept_ci[1] if fit else np.nan,
            "slope_ns_per_cell": fit.slope if fit else np.nan,
            "slope_ci_low": fit.slope_ci[0] if fit else np.nan,
            "slope_ci_high": fit.slope_ci[1] if fit else np.nan,
            "residual_scale_ns": fit.scale if fit else np.nan,
            "long_from": float(middle) if long_fit else np.nan,
            "long_slope_ns_per_cell": long_fit.slope if long_fit else np.nan,
            "long_slope_ci_low": long_fit.slope_ci[0] if long_fit else np.nan,
            "long_slope_ci_high": long_fit.slope_ci[1] if long_fit else np.nan,
        })
    return pd.DataFrame(rows, columns=[
        "config", "n_tokens", "steps", "context_min", "context_max", "median_wall_ns", "intercept_ns",
        "intercept_ci_low", "intercept_ci_high", "slope_ns_per_cell", "slope_ci_low", "slope_ci_high",
        "residual_scale_ns", "long_from", "long_slope_ns_per_cell", "long_slope_ci_low", "long_slope_ci_high"])


def step_events(steps: pd.DataFrame, realloc_in_step: pd.Series, reserve_in_step: pd.Series,
                fa_plan_in_step: pd.Series) -> pd.DataFrame:
    """Per step, what could explain a change in its time: KV view growth (every 256 cells), graph rebuilt,
    reallocations, re-reserves, new FlashAttention plans. The `*_in_step` series are the `in_step` columns of
    those event tables."""
    frame = steps[["step", "config", "n_tokens", "context", "n_kv", "graph_reused"]].sort_values(
        ["config", "n_tokens", "context"], kind="stable")
    previous_kv = frame.groupby(["config", "n_tokens"])["n_kv"].shift()
    frame = frame.assign(
        n_kv_before=previous_kv,
        reallocs=frame["step"].map(realloc_in_step.value_counts()).fillna(0).astype(int),
        reserves=frame["step"].map(reserve_in_step.value_counts()).fillna(0).astype(int),
        new_fa_plans=frame["step"].map(fa_plan_in_step.value_counts()).fillna(0).astype(int),
    )
    return frame


def _describe(row) -> str:
    parts = []
    if pd.notna(row.n_kv_before) and pd.notna(row.n_kv) and row.n_kv != row.n_kv_before:
        parts.append(f"KV view {int(row.n_kv_before)} -> {int(row.n_kv)} cells")
    if row.graph_reused is False or row.graph_reused == 0:
        parts.append("graph rebuilt")
    if row.reallocs:
        parts.append(f"{row.reallocs} allocator reallocation(s)")
    if row.reserves:
        parts.append(f"{row.reserves} scheduler re-reserve(s)")
    if row.new_fa_plans:
        parts.append(f"{row.new_fa_plans} new FlashAttention plan(s)")
    return "; ".join(parts) or "no engine event"


def find_breakpoints(steps: pd.DataFrame, events: pd.DataFrame | None = None) -> pd.DataFrame:
    """Contexts where step time changes level or slope, and where it has grown 2x, 4x, 8x... over the first steps
    (smooth growth has no change of slope, yet a reader must see where a run got several times slower), per
    (configuration, batch size), with the events of the steps around each (`events`: the output of `step_events`).
    `change` says which: "level or slope", "2x the first steps", or both."""
    rows = []
    by_step = events.set_index("step") if events is not None and len(events) else None
    for (config, n_tokens), group in _fit_steps(steps).groupby(GROUP, sort=True):
        if len(group) < 2 * MIN_STEPS_FOR_FIT or group["context"].nunique() < 6:
            continue
        bins = bin_medians(group["context"].to_numpy(), group["wall_ns"].to_numpy(),
                           max_bins=max(6, min(120, len(group) // 4)))
        level_changes = breakpoints(bins)
        changes = {k: ["level or slope"] for k in level_changes}
        first_level = float(np.median(bins.y[:3]))
        for k, fold in _growth_milestones(bins.y, first_level).items():
            at = next((b for b in changes if abs(b - k) <= 1), k)
            changes.setdefault(at, []).append(f"{fold}x the first steps")
        for k, what in sorted(changes.items()):
            grown = k not in level_changes
            before = bins.y[:3] if grown else bins.y[max(k - 3, 0):k]
            # the steps around the change: those of the two bins it separates
            near = group[(group["context"] >= bins.lo[max(k - 1, 0)]) & (group["context"] <= bins.hi[k])]
            # a level change sits at its bin's first context; growth at the context its bin's steps ran at
            rows.append({"config": config, "n_tokens": int(n_tokens),
                         "context": float(bins.x[k] if grown else bins.lo[k]),
                         "change": ", ".join(what), "wall_before_ns": float(np.median(before)),
                         "wall_after_ns": float(np.median(bins.y[k:k + 3])), "steps": near["step"].tolist(),
                         "events": _events_near(by_step, near["step"])})
    return pd.DataFrame(rows, columns=["config", "n_tokens", "context", "change", "wall_before_ns", "wall_after_ns",
                                       "steps", "events"])


def _growth_milestones(levels: np.ndarray, first_level: float) -> dict[int, int]:
    """First bin -> fold, for the folds 2, 4, 8, ... of `first_level` that the binned levels reach and keep (the
    bin and the next two at or over it: one slow bin is noise, not growth); a bin reaching several folds at once
    (a jump between depths) keeps the largest."""
    kept = np.array([np.median(levels[k:k + 3]) for k in range(len(levels))])
    milestones: dict[int, int] = {}
    fold = 2
    while first_level > 0 and (reached := np.flatnonzero((levels >= fold * first_level) &
                                                         (kept >= fold * first_level))).size:
        milestones[int(reached[0])] = fold
        fold *= 2
    return milestones


def _events_near(by_step: pd.DataFrame | None, near_steps: pd.Series) -> str:
    if by_step is None:
        return "no engine event"
    rows_near = by_step.loc[by_step.index.intersection(near_steps)]
    return "; ".join(sorted({_describe(r) for r in rows_near.itertuples()} - {"no engine event"})) \
        or "no engine event"


def placement_shares(memory_by_owner: pd.DataFrame, model: ModelBytes | None = None) -> dict[str, dict[str, float]]:
    """Share of the weight bytes a step reads, and of the KV cache, on each memory location (`memory_by_owner`:
    the output of `memory.placement`).

    The engine keeps the token embeddings on the host, where a step reads only its tokens' rows: the host's
    weight bytes count less the model's unread bytes, and less any copy of a tensor a device also holds."""
    shares = {}
    for owner in ("weights", "kv"):
        part = memory_by_owner[memory_by_owner["owner"] == owner].groupby("location")["bytes"].sum()
        if owner == "weights" and model is not None and HOST in part.index:
            unread = model.weight_bytes - model.weight_bytes_per_step
            # bytes placed beyond the model's are a host copy of a tensor that is also on a device: tied token
            # embeddings, whose host copy gives a step only its tokens' rows
            duplicated = max(0, part.sum() - model.weight_bytes)
            part[HOST] = max(0, part[HOST] - unread - duplicated)
        total = part.sum()
        shares[owner] = {location: value / total for location, value in part.items() if value > 0} if total else {}
    return shares


def bandwidth_floor(steps: pd.DataFrame, model: ModelBytes, bandwidth: pd.DataFrame,
                    shares: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Per step, the time it cannot beat: each device reads its part of the weights and of the KV view at its
    bandwidth, one device after another (a layer split runs its devices in turn for one token).

    `shares`: owner -> location -> share of that owner's bytes (from the trace's buffers). Steps get NaN where a
    location holding bytes has no known bandwidth."""
    rate = dict(zip(bandwidth["device"], bandwidth["bytes_per_s"]))
    n_kv = steps["n_kv"].fillna(steps["context"]).to_numpy(np.float64)
    weight_s = 0.0
    kv_s = np.zeros(len(steps))
    for location, share in (shares.get("weights") or {"CPU": 1.0}).items():
        weight_s = weight_s + share * model.weight_bytes_per_step / rate.get(location, np.nan)
    for location, share in (shares.get("kv") or {"CPU": 1.0}).items():
        kv_s = kv_s + share * model.kv_bytes_read(n_kv) / rate.get(location, np.nan)
    floor_ns = (weight_s + kv_s) * 1e9
    # a batch of several tokens reads the weights once: the floor is per step, whatever its tokens
    out = steps[["step", "config", "n_tokens", "context", "wall_ns", "cold_start"]].assign(
        floor_ns=floor_ns, bytes_read=model.bytes_per_step(n_kv))
    out["efficiency"] = out["floor_ns"] / out["wall_ns"]
    return out


def floor_slope_ns_per_cell(model: ModelBytes, bandwidth: pd.DataFrame, shares: dict[str, dict[str, float]]) -> float:
    """How fast the floor grows per context cell (full-attention layers' KV over the KV's devices)."""
    rate = dict(zip(bandwidth["device"], bandwidth["bytes_per_s"]))
    seconds = sum(share * model.kv_bytes_per_cell_total / rate.get(location, np.nan)
                  for location, share in (shares.get("kv") or {"CPU": 1.0}).items())
    return float(seconds * 1e9)
