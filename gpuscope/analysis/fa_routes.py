"""FlashAttention routes: the distinct kernel plans (shape, types, kernel, reason) with their counts and steps,
plans with no kernel (NONE), ops the scheduler placed on another backend than their layer's device, and where the
route changes with batch size or context.

The hooks deduplicate identical plans, so a plan's count is the number of distinct (caller, batch, KV view)
selections that chose it, not the number of launches."""
from __future__ import annotations

import numpy as np
import pandas as pd

from gpuscope.trace.ggml_names import type_name
from gpuscope.trace.steps import join_to_steps

# what makes two selections the same plan: the attention's shape and types, and what was chosen
PLAN_KEY = ["device", "head_dim_k", "head_dim_v", "q_heads", "kv_heads", "type_k", "type_v", "type_mask",
            "kernel", "reason"]
# the shape without the batch and context: a route that changes within one of these changed with batch/context
ROUTE_KEY = ["device", "head_dim_k", "head_dim_v", "q_heads", "kv_heads", "type_k", "type_v"]


def _named(fa_plan: pd.DataFrame) -> pd.DataFrame:
    frame = fa_plan.copy()
    for column in ("type_q", "type_k", "type_v", "type_mask"):
        frame[column] = [type_name(v) for v in frame[column].to_numpy(np.int64)]
    for column in ("device", "kernel", "reason", "caller", "tensor"):
        frame[column] = frame[column].astype(str)
    return frame


def plans(fa_plan: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct plan: its key, selections, the batch sizes and KV views seen, the callers, and the
    steps whose selections chose it."""
    columns = PLAN_KEY + ["selections", "q_tokens", "n_kv_min", "n_kv_max", "callers", "steps", "first_seq"]
    if not len(fa_plan):
        return pd.DataFrame(columns=columns)
    frame = _named(fa_plan).assign(in_step=join_to_steps(fa_plan, steps, by_thread=True))
    grouped = frame.groupby(PLAN_KEY, sort=False, observed=True)
    out = grouped.agg(selections=("seq", "size"), n_kv_min=("n_kv", "min"), n_kv_max=("n_kv", "max"),
                      first_seq=("seq", "min"))
    out["q_tokens"] = grouped["q_tokens"].agg(lambda s: sorted(set(int(v) for v in s)))
    out["callers"] = grouped["caller"].agg(lambda s: sorted(set(s)))
    out["steps"] = grouped["in_step"].agg(lambda s: sorted(set(int(v) for v in s.dropna())))
    return out.reset_index().sort_values("first_seq", kind="stable").reset_index(drop=True)[columns]


def none_plans(fa_plan: pd.DataFrame) -> pd.DataFrame:
    """The selections that found no kernel: the op cannot run on that device (at supports-op time the scheduler
    moves it to another backend; at compute time the engine aborts)."""
    if not len(fa_plan):
        return pd.DataFrame(columns=list(fa_plan.columns))
    frame = _named(fa_plan)
    return frame[frame["kernel"] == "none"].reset_index(drop=True)


def route_changes(fa_plan: pd.DataFrame) -> pd.DataFrame:
    """For each attention shape, the batch sizes / KV views at which the chosen kernel changes."""
    columns = ROUTE_KEY + ["q_tokens", "n_kv", "kernel_before", "kernel_after"]
    if not len(fa_plan):
        return pd.DataFrame(columns=columns)
    frame = _named(fa_plan).sort_values(["q_tokens", "n_kv", "seq"], kind="stable")
    rows = []
    for key, group in frame.groupby(ROUTE_KEY, sort=False, observed=True):
        kernels = group["kernel"].to_numpy()
        changed = np.flatnonzero(kernels[1:] != kernels[:-1]) + 1
        for i in changed:
            row = dict(zip(ROUTE_KEY, key))
            row.update(q_tokens=int(group["q_tokens"].iloc[i]), n_kv=int(group["n_kv"].iloc[i]),
                       kernel_before=kernels[i - 1], kernel_after=kernels[i])
            rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def placements(op_placement: pd.DataFrame, op_names: dict[int, str]) -> pd.DataFrame:
    """Ops placed on another backend than their layer's device, with op names and whether they are attention."""
    columns = ["seq", "tensor", "op", "layer", "backend", "layer_backend", "is_attention"]
    if not len(op_placement):
        return pd.DataFrame(columns=columns)
    ops = op_placement["op"].to_numpy(np.int64)
    names = [op_names.get(int(op), f"op{int(op)}") for op in ops]
    tensor = op_placement["tensor"].astype(str).to_numpy()
    is_attention = np.array([n == "flash_attn_ext" for n in names]) | np.char.startswith(
        tensor.astype(str), "__fattn__")
    return pd.DataFrame({
        "seq": op_placement["seq"].to_numpy(np.int64), "tensor": tensor, "op": names,
        "layer": op_placement["layer"].to_numpy(np.int64), "backend": op_placement["backend"].astype(str).to_numpy(),
        "layer_backend": op_placement["layer_backend"].astype(str).to_numpy(), "is_attention": is_attention,
    })
