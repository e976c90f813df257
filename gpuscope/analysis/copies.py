"""Splits and cross-device copies: splits per step per backend, copies per step and device pair with their bytes
and time, and which layers' tensors cross devices every step.

A layer split needs a few copies per step at each device boundary (the hidden state, positions, the mask). A
buffer kept on one device but used by layers on another shows up as copies of many layers' tensors every step. A
tensor split (the meta backend) all-reduces every layer's partial results between its devices: those copies are
the split's own price, counted apart from placement copies (`collective_*` columns)."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from gpuscope.analysis.columns import per_value, text
from gpuscope.trace.steps import JOIN_COLUMN, inside_steps, join_to_steps

# llama.cpp names: activations '<name>-<il>' (views get ' (view)' and the like appended), the KV cache
# 'cache_k_l<il>' / 'cache_v_l<il>', weights 'blk.<il>.<name>', 'token_embd.weight', 'output.weight'
_LAYER = re.compile(r"^(?:cache_[kv]_l(\d+)|blk\.(\d+)\.|[^ ]*?-(\d+)(?:$| ))")
_STORED = re.compile(r"^(?:cache_[kv]_l\d+|blk\.\d+\.|token_embd\.|output(?:_norm)?\.)")
# copy modes of a tensor split's all-reduces (enum gpuscope_copy_mode)
COLLECTIVE_MODES = ("allreduce", "reduce_step")


def _layer_of(name: str) -> int:
    match = _LAYER.match(name)
    return int(next(group for group in match.groups() if group is not None)) if match else -1


def tensor_layer(names: pd.Series) -> np.ndarray:
    """Layer index from a tensor's name, -1 when the name carries none."""
    return per_value(names, _layer_of, np.int64)


def is_stored(names: pd.Series) -> np.ndarray:
    """Tensors that live in a buffer (KV cache, weights) rather than being computed in the step."""
    return per_value(names, lambda name: _STORED.match(name) is not None, bool)


def splits_per_step(steps: pd.DataFrame, split_begin: pd.DataFrame) -> pd.DataFrame:
    """Per step: splits per backend and in total."""
    if not len(split_begin):
        return pd.DataFrame(columns=["step", "splits"])
    split_begin = inside_steps(split_begin, steps, by_thread=True)
    frame = pd.DataFrame({"step": split_begin[JOIN_COLUMN].to_numpy(),
                          "backend": text(split_begin["backend"]).to_numpy()})
    table = frame.groupby(["step", "backend"]).size().unstack(fill_value=0)
    table.columns = [f"splits:{c}" for c in table.columns]
    table.insert(0, "splits", table.sum(axis=1))
    return table.reset_index()


def meta_parts_per_step(steps: pd.DataFrame, meta_part: pd.DataFrame) -> pd.DataFrame:
    """Per step and device of a tensor split: the parts of subgraphs submitted, their nodes and host submit time."""
    columns = ["step", "device", "parts", "nodes", "submit_ns"]
    if not len(meta_part):
        return pd.DataFrame(columns=columns)
    # devices made categories over the whole table, so that their order does not depend on the step windows
    meta_part = inside_steps(meta_part.assign(device=text(meta_part["device"])), steps, by_thread=True)
    frame = pd.DataFrame({"step": meta_part[JOIN_COLUMN].to_numpy(), "device": meta_part["device"].array,
                          "nodes": meta_part["n_nodes"].to_numpy(np.int64),
                          "duration_ns": meta_part["duration_ns"].to_numpy(np.int64)})
    return frame.groupby(["step", "device"]).agg(
        parts=("nodes", "size"), nodes=("nodes", "sum"), submit_ns=("duration_ns", "sum")).reset_index()[columns]


def copy_events(steps: pd.DataFrame, copy: pd.DataFrame) -> pd.DataFrame:
    """The copy events with their step (<NA>: outside every step) and the layer of the copied tensor."""
    columns = ["seq", "step", "src_device", "dst_device", "tensor", "layer", "stored", "bytes", "duration_ns", "mode"]
    if not len(copy):
        return pd.DataFrame(columns=columns)
    return pd.DataFrame({
        "seq": copy["seq"].to_numpy(np.int64), "step": join_to_steps(copy, steps, by_thread=True).array,
        "src_device": text(copy["src_device"]).array, "dst_device": text(copy["dst_device"]).array,
        "tensor": text(copy["tensor"]).array, "layer": tensor_layer(copy["tensor"]),
        "stored": is_stored(copy["tensor"]),
        "bytes": copy["bytes"].to_numpy(np.int64), "duration_ns": copy["duration_ns"].to_numpy(np.int64),
        "mode": text(copy["mode"]).array,
    })


def per_step(steps: pd.DataFrame, copies: pd.DataFrame) -> pd.DataFrame:
    """Per step: copies, bytes, time; distinct layers whose tensors were copied; copies of stored tensors (KV
    cache, weights) and the time of every copy for the layers whose stored tensors crossed devices."""
    index = pd.Index(steps["step"].to_numpy(np.int64), name="step")
    columns = ["copies", "bytes", "time_ns", "layers_copied", "stored_copies", "stored_bytes", "foreign_layer_time_ns",
               "collective_copies", "collective_bytes", "collective_time_ns"]
    inside = copies[copies["step"].notna()].astype({"step": np.int64})
    if not len(inside):
        return pd.DataFrame(0, index=index, columns=columns).reset_index()
    grouped = inside.groupby("step")
    collective = inside[inside["mode"].isin(COLLECTIVE_MODES).to_numpy(bool)]
    inside = inside.drop(collective.index)  # what follows speaks of placement
    stored = inside[inside["stored"].to_numpy(bool)]
    foreign_layers = stored.loc[stored["layer"] >= 0, ["step", "layer"]].drop_duplicates()
    for_foreign = inside.merge(foreign_layers, on=["step", "layer"], how="inner")
    for_foreign = pd.concat([for_foreign, stored[stored["layer"] < 0]])
    out = pd.DataFrame({
        "copies": grouped.size(), "bytes": grouped["bytes"].sum(), "time_ns": grouped["duration_ns"].sum(),
        "layers_copied": inside[inside["layer"] >= 0].groupby("step")["layer"].nunique(),
        "stored_copies": stored.groupby("step").size(), "stored_bytes": stored.groupby("step")["bytes"].sum(),
        "foreign_layer_time_ns": for_foreign.groupby("step")["duration_ns"].sum(),
        "collective_copies": collective.groupby("step").size(),
        "collective_bytes": collective.groupby("step")["bytes"].sum(),
        "collective_time_ns": collective.groupby("step")["duration_ns"].sum(),
    }).reindex(index, fill_value=0).fillna(0).astype(np.int64)
    return out.reset_index()


def pair_summary(steps: pd.DataFrame, copies: pd.DataFrame) -> pd.DataFrame:
    """Per device pair: copies, bytes and time per step over the complete steps, and the tensors copied most."""
    columns = ["src_device", "dst_device", "copies_per_step", "bytes_per_step", "time_per_step_ns", "share",
               "top_tensors"]
    done = steps[steps["complete"] & steps["wall_ns"].notna()]
    inside = copies[copies["step"].isin(done["step"])]
    if not len(inside):
        return pd.DataFrame(columns=columns)
    rows = []
    wall = done["wall_ns"].sum()
    for (src, dst), group in inside.groupby(["src_device", "dst_device"]):
        top = group.groupby("tensor")["bytes"].sum().sort_values(ascending=False).head(5)
        rows.append({"src_device": src, "dst_device": dst, "copies_per_step": len(group) / len(done),
                     "bytes_per_step": group["bytes"].sum() / len(done),
                     "time_per_step_ns": group["duration_ns"].sum() / len(done),
                     "share": group["duration_ns"].sum() / wall, "top_tensors": list(top.index)})
    return pd.DataFrame(rows, columns=columns).sort_values("time_per_step_ns", ascending=False) \
        .reset_index(drop=True)
