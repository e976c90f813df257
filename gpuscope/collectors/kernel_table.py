"""The `kernels` trace table: one row per GPU activity (kernel, memory copy, memory set), whatever recorded it
(torch's profiler in-process, or an imported rocprofv3 profile), and the pure functions over it.

Columns (docs/trace-format.md, section "Collector tables", is the reference):

  ts_ns, duration_ns     start on the trace's clock (CLOCK_MONOTONIC, as the ring's events) and length, ns
  device, device_index   the engine's name for the GPU (CUDA0, ROCm0) and its ordinal
  stream                 CUDA stream / HIP stream (or HSA queue when no stream is known)
  category               kernel | memcpy | memset
  name                   the name as the profiler reported it (demangled, with template arguments)
  kernel                 the function's base name (no return type, namespace, template arguments or parameters)
  family                 matmul, flash_attn, quantize, norm, rope, softmax, copy, elementwise, moe, reduce, other
  fa_kind                for flash_attn: the kernel kind the FA route chose (vec, tile, mma_f16) or helper; else ""
  grid_x..z, block_x..z  launch shape (AMD: grid in work-items, block = workgroup), nullable
  registers, shared_memory_bytes, bytes, copy_kind, correlation   nullable details
  source                 torch-kineto | rocprofv3-csv | rocprofv3-rocpd
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

KERNEL_COLUMNS = {
    "ts_ns": "int64", "duration_ns": "int64", "device": "object", "device_index": "int64", "stream": "int64",
    "category": "object", "name": "object", "kernel": "object", "family": "object", "fa_kind": "object",
    "grid_x": "Int64", "grid_y": "Int64", "grid_z": "Int64", "block_x": "Int64", "block_y": "Int64",
    "block_z": "Int64", "registers": "Int64", "shared_memory_bytes": "Int64", "bytes": "Int64",
    "copy_kind": "object", "correlation": "Int64", "source": "object",
}

FAMILIES = ("matmul", "flash_attn", "quantize", "norm", "rope", "softmax", "copy", "elementwise", "moe", "reduce",
            "other")

# ggml-cuda's FlashAttention kernels, by the route kind (gpuscope_fa_kernel) that launches them
FA_KERNEL_KINDS = {"flash_attn_ext_vec": "vec", "flash_attn_tile": "tile", "flash_attn_ext_f16": "mma_f16"}

# (family, pattern on the base kernel name); the first match wins
_FAMILY_RULES = [
    ("flash_attn", r"^flash_attn"),
    ("quantize", r"^quantize_(q8_1|mmq)"),
    ("matmul", r"^mul_mat|^k_compute_batched_ptrs|^k_compute_out_prod_ptrs|gemm|gemv|cutlass|^nvjet|xmma|cublas"
               r"|^Cijk_|rocblas|hipblaslt|^ampere_|^sm\d+_"),
    ("moe", r"moe|^mm_ids_helper|^k_argsort|^top_k|^topk"),
    ("norm", r"norm"),
    ("rope", r"^rope"),
    ("softmax", r"^soft_max|^softmax"),
    ("copy", r"^cpy_|^k_set_rows|^k_get_rows|^concat|^convert_unary|^dequantize|^__amd_rocclr_(copy|fill)"
             r"|^k_repeat|^memcpy|^memset"),
    ("reduce", r"^argmax|^reduce_rows|^count_equal|^cumsum|^sum_rows|^divide_by_count"),
    ("elementwise", r"^k_bin_bcast|^unary|^scale_f32|^softcap|^swiglu|^add_id|^op_clamp|^leaky_relu|^silu|^xielu"
                    r"|^fill_kernel|^arange|^pad_f32|^diag|^gated|^snake|^tri_kernel|^upscale|^roll_"
                    r"|^timestep_embedding|^acc_f32|^geglu|^reglu"),
]
_COMPILED_RULES = [(family, re.compile(pattern, re.IGNORECASE)) for family, pattern in _FAMILY_RULES]


def empty_kernels() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in KERNEL_COLUMNS.items()})


def kernel_frame(rows: dict) -> pd.DataFrame:
    """A kernels table from columns (lists, arrays, Series or one value for every row; missing columns become
    null); adds kernel, family and fa_kind."""
    length = len(rows["ts_ns"])

    def column(name: str, dtype: str) -> pd.Series:
        values = rows.get(name)
        if values is None or isinstance(values, str) or np.isscalar(values):
            values = [values] * length
        values = list(values.to_numpy() if isinstance(values, pd.Series) else values)
        return pd.Series([None if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in values],
                         dtype=dtype)

    frame = pd.DataFrame({name: column(name, dtype) for name, dtype in KERNEL_COLUMNS.items()
                          if name not in ("kernel", "family", "fa_kind")})
    frame = pd.concat([frame, classify(frame["name"], frame["category"])], axis=1)
    return frame[list(KERNEL_COLUMNS)].sort_values(["ts_ns", "device_index", "stream"], kind="stable",
                                                   ignore_index=True)


def base_name(name: str) -> str:
    """`void ns::mul_mat_q<(ggml_type)12, 128, false>(char const*, ...)` -> `mul_mat_q`."""
    name = name.replace("(anonymous namespace)::", "")
    depth = 0
    cut = len(name)
    for i, char in enumerate(name):
        if char in "<(" and depth == 0 and i > 0:
            cut = i
            break
        if char in "<([":
            depth += 1
        elif char in ">)]":
            depth -= 1
    head = name[:cut].strip()
    head = head.rsplit(" ", 1)[-1]  # drop a return type ("void")
    return head.rsplit("::", 1)[-1] or name


def classify(names: pd.Series, categories: pd.Series | None = None) -> pd.DataFrame:
    """kernel (base name), family and fa_kind for each activity; copies and sets by category come out as `copy`."""
    unique = pd.unique(names.astype(str))
    table = {}
    for name in unique:
        kernel = base_name(name)
        family = next((f for f, rule in _COMPILED_RULES if rule.search(kernel)), "other")
        fa_kind = FA_KERNEL_KINDS.get(kernel, "helper") if family == "flash_attn" else ""
        table[name] = (kernel, family, fa_kind)
    as_text = names.astype(str)
    out = pd.DataFrame({
        "kernel": as_text.map(lambda n: table[n][0]),
        "family": as_text.map(lambda n: table[n][1]),
        "fa_kind": as_text.map(lambda n: table[n][2]),
    }, index=names.index)
    if categories is not None:
        is_copy = categories.astype(str).isin(["memcpy", "memset"]).to_numpy()
        out.loc[is_copy, "family"] = "copy"
        out.loc[is_copy, "fa_kind"] = ""
    return out


# -- joining kernels to decode steps -----------------------------------------------------------------------------

def step_windows(steps: pd.DataFrame) -> pd.DataFrame:
    """step, begin_ns, end_ns from a session's `steps` table (t_begin_ns/t_end_ns) or the analysis step table
    (begin_ns/end_ns)."""
    if {"t_begin_ns", "t_end_ns"} <= set(steps.columns):
        begin, end = "t_begin_ns", "t_end_ns"
    elif {"begin_ns", "end_ns"} <= set(steps.columns):
        begin, end = "begin_ns", "end_ns"
    else:
        raise KeyError("a step table needs t_begin_ns/t_end_ns (session steps) or begin_ns/end_ns (step_table)")
    windows = pd.DataFrame({"step": steps["step"].to_numpy(np.int64), "begin_ns": steps[begin].to_numpy(np.int64),
                            "end_ns": steps[end].to_numpy(np.int64)})
    return windows.sort_values("begin_ns", ignore_index=True)


def _clipped(kernels: pd.DataFrame, windows: pd.DataFrame) -> pd.DataFrame:
    """Kernels that start inside a step window, with start/end clipped to it (a kernel belongs to the step in
    which it started)."""
    if not len(kernels) or not len(windows):
        return pd.DataFrame(columns=["step", "device", "family", "fa_kind", "start", "end"])
    starts = kernels["ts_ns"].to_numpy(np.int64)
    index = np.searchsorted(windows["begin_ns"].to_numpy(np.int64), starts, side="right") - 1
    safe = np.clip(index, 0, None)
    inside = (index >= 0) & (starts <= windows["end_ns"].to_numpy(np.int64)[safe])
    chosen = windows.iloc[safe[inside]]
    picked = kernels[inside]
    start = np.maximum(picked["ts_ns"].to_numpy(np.int64), chosen["begin_ns"].to_numpy(np.int64))
    end = np.minimum(picked["ts_ns"].to_numpy(np.int64) + picked["duration_ns"].to_numpy(np.int64),
                     chosen["end_ns"].to_numpy(np.int64))
    return pd.DataFrame({"step": chosen["step"].to_numpy(np.int64), "device": picked["device"].astype(str).to_numpy(),
                         "family": picked["family"].astype(str).to_numpy(),
                         "fa_kind": picked["fa_kind"].astype(str).to_numpy(),
                         "start": start, "end": np.maximum(end, start)})


def gpu_busy_per_step(kernels: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """Per step and device: the window, the time at least one kernel/copy ran (union over streams), idle time,
    busy fraction, activities, the longest idle gap, and the lead (step begin to first activity) and tail (last
    activity to step end). Steps without any activity on a device have no row for it."""
    columns = ["step", "device", "window_ns", "busy_ns", "idle_ns", "busy_fraction", "n_activities",
               "max_gap_ns", "lead_ns", "tail_ns"]
    windows = step_windows(steps)
    spans = _clipped(kernels, windows)
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
    bounds = windows.set_index("step")
    out["window_ns"] = out["step"].map(bounds["end_ns"] - bounds["begin_ns"]).astype(np.int64)
    out["lead_ns"] = out["first"] - out["step"].map(bounds["begin_ns"])
    out["tail_ns"] = out["step"].map(bounds["end_ns"]) - out["last"]
    out["idle_ns"] = out["window_ns"] - out["busy_ns"]
    out["busy_fraction"] = out["busy_ns"] / out["window_ns"].where(out["window_ns"] > 0)
    out["max_gap_ns"] = out[["max_gap_ns", "lead_ns", "tail_ns"]].max(axis=1).fillna(0).astype(np.int64)
    return out[columns].sort_values(["step", "device"], ignore_index=True)


def family_time_per_step(kernels: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """Per step, device, family and FA kind: activities and their summed time inside the step (streams that
    overlap count twice here; gpu_busy_per_step gives the union)."""
    spans = _clipped(kernels, step_windows(steps))
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
