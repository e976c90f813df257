"""GPU activities (the `kernels` table) against decode steps: GPU busy time per step and device, time per kernel
family, the FlashAttention kernels each route plan launched, and what collecting them cost."""
from __future__ import annotations

import numpy as np
import pandas as pd

from gpuscope.trace.steps import JOIN_COLUMN, inside_steps


def _clipped(kernels: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """Kernels that start inside a step, with start/end clipped to its window (a kernel belongs to the step in
    which it started)."""
    if not len(kernels) or not len(steps):
        return pd.DataFrame(columns=["step", "device", "family", "fa_kind", "start", "end"])
    picked = inside_steps(kernels, steps)
    step_ids = picked[JOIN_COLUMN].to_numpy()
    windows = steps.set_index("step")[["t_begin_ns", "t_end_ns"]]
    chosen = windows.to_numpy(np.int64)[windows.index.get_indexer(step_ids)]
    start = np.maximum(picked["ts_ns"].to_numpy(np.int64), chosen[:, 0])
    end = np.minimum(picked["ts_ns"].to_numpy(np.int64) + picked["duration_ns"].to_numpy(np.int64), chosen[:, 1])
    return pd.DataFrame({"step": step_ids, "device": picked["device"].astype(str).to_numpy(),
                         "family": picked["family"].astype(str).to_numpy(),
                         "fa_kind": picked["fa_kind"].astype(str).to_numpy(),
                         "start": start, "end": np.maximum(end, start)})


def gpu_busy_per_step(kernels: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """Per step and device: the window, the time at least one kernel/copy ran (union over streams), idle time,
    busy fraction, activities, the longest idle gap, and the lead (step begin to first activity) and tail (last
    activity to step end). Steps without any activity on a device have no row for it."""
    columns = ["step", "device", "window_ns", "busy_ns", "idle_ns", "busy_fraction", "n_activities",
               "max_gap_ns", "lead_ns", "tail_ns"]
    spans = _clipped(kernels, steps)
    if not len(spans):
        return pd.DataFrame({c: pd.Series(dtype="object" if c == "device" else "int64") for c in columns})
    spans = spans.sort_values(["step", "device", "start"], kind="stable", ignore_index=True)
    keys = [spans["step"], spans["device"]]
    reach = spans.groupby(keys, sort=False)["end"].cummax()  # furthest end so far, this activity included
    before = reach.groupby(keys, sort=False).shift()  # furthest end before this activity
    covered_from = np.maximum(spans["start"], before.fillna(spans["start"]).astype(np.int64))
    spans["added"] = (spans["end"] - covered_from).clip(lower=0)
    spans["gap"] = (spans["start"] - before).clip(lower=0)
    grouped = spans.groupby(["step", "device"], sort=False)
    out = grouped.agg(busy_ns=("added", "sum"), n_activities=("start", "size"), first=("start", "min"),
                      last=("end", "max"), max_gap_ns=("gap", "max")).reset_index()
    bounds = steps.set_index("step")
    out["window_ns"] = out["step"].map(bounds["t_end_ns"] - bounds["t_begin_ns"]).astype(np.int64)
    out["lead_ns"] = out["first"] - out["step"].map(bounds["t_begin_ns"])
    out["tail_ns"] = out["step"].map(bounds["t_end_ns"]) - out["last"]
    out["idle_ns"] = out["window_ns"] - out["busy_ns"]
    out["busy_fraction"] = out["busy_ns"] / out["window_ns"].where(out["window_ns"] > 0)
    out["max_gap_ns"] = out[["max_gap_ns", "lead_ns", "tail_ns"]].max(axis=1).fillna(0).astype(np.int64)
    return out[columns].sort_values(["step", "device"], ignore_index=True)


def family_time_per_step(kernels: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """Per step, device, family and FA kind: activities and their summed time inside the step (streams that
    overlap count twice here; gpu_busy_per_step gives the union)."""
    spans = _clipped(kernels, steps)
    if not len(spans):
        return pd.DataFrame({"step": pd.Series(dtype="int64"), "device": pd.Series(dtype="object"),
                             "family": pd.Series(dtype="object"), "fa_kind": pd.Series(dtype="object"),
                             "n_activities": pd.Series(dtype="int64"), "time_ns": pd.Series(dtype="int64")})
    spans["time_ns"] = spans["end"] - spans["start"]
    return (spans.groupby(["step", "device", "family", "fa_kind"], sort=True)
            .agg(n_activities=("time_ns", "size"), time_ns=("time_ns", "sum")).reset_index())


def profiled_windows(meta: dict) -> list[tuple[int, int]]:
    """The (from, to) CLOCK_MONOTONIC spans the kernel profiler ran, from a trace's metadata."""
    return [(int(m["profiled_from_ns"]), int(m["profiled_to_ns"])) for m in meta.get("kernels", {}).values()
            if "profiled_from_ns" in m and "profiled_to_ns" in m]


def fa_kernels_by_route(kernels: pd.DataFrame, fa_plan: pd.DataFrame,
                        profiled: list[tuple[int, int]] | None = None) -> pd.DataFrame:
    """Each FlashAttention plan the engine made at compute time, with the first FA kernel that started on its
    device after it (the launch that plan chose): `launched` (kernel base name), `launched_kind`, and `agrees`
    (the launched kind is the planned one). The hooks record a plan once per distinct selection, so this is one
    row per distinct plan occurrence, not per launch. With `profiled` (profiled_windows(meta)), only plans made
    while the profiler ran are matched: a plan made before it (an unprofiled pass over the same shapes) is not
    recorded again, and its launch was never profiled."""
    columns = ["seq", "ts_ns", "device", "kernel", "q_tokens", "n_kv", "head_dim_k", "type_k", "type_v",
               "launched", "launched_name", "launched_kind", "launched_ts_ns", "agrees"]
    if not len(fa_plan):
        return pd.DataFrame(columns=columns)
    plans = fa_plan[fa_plan["caller"].astype(str) == "compute"].copy()
    fa = kernels[(kernels["family"] == "flash_attn") & (kernels["fa_kind"] != "helper")]
    if not len(plans):
        return pd.DataFrame(columns=columns)
    plans["device"] = plans["device"].astype(str)
    plans["ts_ns"] = plans["ts_ns"].astype(np.int64)
    if profiled is not None:
        inside = np.zeros(len(plans), bool)
        for begin, end in profiled:
            inside |= plans["ts_ns"].between(begin, end).to_numpy()
        plans = plans[inside]
        if not len(plans):
            return pd.DataFrame(columns=columns)
    plans = plans.sort_values("ts_ns")
    launched = pd.DataFrame({"launched_ts_ns": fa["ts_ns"].astype(np.int64), "device": fa["device"].astype(str),
                             "launched": fa["kernel"].astype(str), "launched_name": fa["name"].astype(str),
                             "launched_kind": fa["fa_kind"].astype(str)}).sort_values("launched_ts_ns")
    matched = pd.merge_asof(plans, launched, left_on="ts_ns", right_on="launched_ts_ns", by="device",
                            direction="forward")
    matched["kernel"] = matched["kernel"].astype(str)
    matched["agrees"] = matched["launched_kind"] == matched["kernel"]
    return matched[columns].reset_index(drop=True)


def fa_route_summary(matched: pd.DataFrame, kernels: pd.DataFrame) -> pd.DataFrame:
    """Per planned FA kernel kind and device: plans, the kernel names its plans launched, whether they all agree,
    and the launches and time of FA kernels of that kind in the whole table."""
    columns = ["device", "kernel", "plans", "launched", "all_agree", "launches", "time_ns"]
    if not len(matched):
        return pd.DataFrame(columns=columns)
    fa = kernels[kernels["family"] == "flash_attn"]
    totals = fa.groupby([fa["device"].astype(str), fa["fa_kind"].astype(str)])["duration_ns"].agg(["size", "sum"])
    rows = []
    for (device, kernel), group in matched.groupby(["device", "kernel"], sort=True):
        launches, time_ns = totals.loc[(device, kernel)] if (device, kernel) in totals.index else (0, 0)
        rows.append({"device": device, "kernel": kernel, "plans": len(group),
                     "launched": sorted(set(group["launched"].dropna())), "all_agree": bool(group["agrees"].all()),
                     "launches": int(launches), "time_ns": int(time_ns)})
    return pd.DataFrame(rows, columns=columns)


def collection_cost(steps: pd.DataFrame) -> dict:
    """Median decode step time with and without the profiler (steps tagged kernel_profiler off/on), per depth
    when the steps have one."""
    if "kernel_profiler" not in steps.columns:
        return {}
    decode = steps[(steps["phase"] == "decode") & steps["kernel_profiler"].notna()]
    keys = ["depth"] if "depth" in decode.columns else []
    rows = []
    for key, group in (decode.groupby(keys) if keys else [((), decode)]):
        off = group.loc[group["kernel_profiler"] == "off", "wall_ns"]
        on = group.loc[group["kernel_profiler"] == "on", "wall_ns"]
        if len(off) and len(on):
            row = {"median_step_ns_off": float(off.median()), "median_step_ns_on": float(on.median())}
            row["overhead"] = row["median_step_ns_on"] / row["median_step_ns_off"] - 1.0
            if keys:
                row["depth"] = int(key[0] if isinstance(key, tuple) else key)
            rows.append(row)
    return {"per_depth" if keys else "overall": rows}
