"""The `kernels` trace table: one row per GPU activity (kernel, memory copy, memory set), whatever recorded it
(torch's profiler in-process, or an imported rocprofv3 profile): its columns and kernel families. Its joins to
decode steps are analysis (gpuscope.analysis.kernels).

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
