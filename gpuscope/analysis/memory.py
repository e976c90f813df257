"""Memory: backend buffers per device and owner (weights, KV, compute, output) over time, the peak per device,
and how the weights are spread against the tensor split that was asked for.

A buffer's location is where its bytes are: its device, or the host for host buffers (a CUDA_Host pinned buffer
reports device CUDA0 but lives in system memory). Buffers wrapping memory the engine did not allocate (mmap'd
weights) are kept with `mapped` True: they occupy the page cache, not the allocator.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

HOST = "CPU"
MAPPED = " (mapped file)"  # what a buffer over a mapped model file adds to its owner's name


def buffer_lifetimes(buffer: pd.DataFrame, runs: np.ndarray | None = None) -> pd.DataFrame:
    """One row per buffer allocation: location, owner, size, allocation and free time (NaN if never freed).
    `runs`: the run of each event in a trace combined from several processes (addresses repeat across runs)."""
    columns = ["buffer", "location", "device", "buft", "owner", "size", "mapped", "alloc_ns", "free_ns", "run"]
    if not len(buffer):
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    frame = pd.DataFrame({
        "seq": buffer["seq"].to_numpy(np.int64),
        "ts_ns": buffer["ts_ns"].to_numpy(np.int64),
        "buffer": buffer["buffer"].to_numpy(np.uint64).astype(np.int64),
        "action": buffer["action"].astype(str).to_numpy(),
        "owner": buffer["owner"].astype(str).to_numpy(),
        "size": buffer["size"].to_numpy(np.int64),
        "device": buffer["device"].astype(object).to_numpy(),
        "buft": buffer["buft"].astype(str).to_numpy(),
        "is_host": buffer["is_host"].to_numpy(bool),
        "mapped": buffer["from_host_ptr"].to_numpy(bool),
        "run": runs if runs is not None else np.zeros(len(buffer), np.int64),
    }).sort_values(["run", "seq"], kind="stable")
    # every alloc opens a lifetime of its address; later events of that address belong to it until a free
    frame["lifetime"] = (frame["action"] == "alloc").groupby([frame["run"], frame["buffer"]]).cumsum()
    frame = frame[frame["lifetime"] > 0]
    key = ["run", "buffer", "lifetime"]
    allocs = frame[frame["action"] == "alloc"].set_index(key)
    frees = frame[frame["action"] == "free"].groupby(key)["ts_ns"].first()
    # usage set after allocation tells weights / compute when no owner scope did
    known = frame[frame["owner"] != "unknown"].groupby(key)["owner"].first()
    out = allocs.assign(free_ns=frees.reindex(allocs.index), alloc_ns=allocs["ts_ns"])
    out["owner"] = known.reindex(allocs.index).fillna(allocs["owner"])
    out["location"] = np.where(out["is_host"], HOST, out["device"].fillna(HOST).astype(str))
    out = out.reset_index()
    return out[columns]


def timeline(lifetimes: pd.DataFrame, *, include_mapped: bool = False) -> pd.DataFrame:
    """Bytes held per (run, location, owner) after each allocation or free: ts_ns, run, location, owner, delta,
    bytes. Mapped buffers are left out unless asked for: the allocator does not hold them."""
    columns = ["ts_ns", "run", "location", "owner", "delta", "bytes"]
    if not len(lifetimes):
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    held = lifetimes if include_mapped else lifetimes[~lifetimes["mapped"].astype(bool)]
    freed = held[held["free_ns"].notna()]
    changes = pd.concat([
        pd.DataFrame({"ts_ns": held["alloc_ns"].to_numpy(np.int64), "run": held["run"].to_numpy(np.int64),
                      "location": held["location"].to_numpy(), "owner": held["owner"].to_numpy(),
                      "delta": held["size"].to_numpy(np.int64)}),
        pd.DataFrame({"ts_ns": freed["free_ns"].to_numpy(np.int64), "run": freed["run"].to_numpy(np.int64),
                      "location": freed["location"].to_numpy(), "owner": freed["owner"].to_numpy(),
                      "delta": -freed["size"].to_numpy(np.int64)}),
    ]).sort_values(["run", "ts_ns"], kind="stable")
    changes["bytes"] = changes.groupby(["run", "location", "owner"])["delta"].cumsum()
    return changes.reset_index(drop=True)[columns]


def peaks(lifetimes: pd.DataFrame) -> pd.DataFrame:
    """Peak bytes the allocator held per location (all owners together), and when."""
    line = timeline(lifetimes)
    if not len(line):
        return pd.DataFrame(columns=["location", "peak_bytes", "at_ns"])
    line = line.assign(total=line.groupby(["run", "location"])["delta"].cumsum())
    at = line.loc[line.groupby("location")["total"].idxmax()]
    return pd.DataFrame({"location": at["location"].to_numpy(), "peak_bytes": at["total"].to_numpy(np.int64),
                         "at_ns": at["ts_ns"].to_numpy(np.int64)})


def placement(lifetimes: pd.DataFrame, run: int | None = None) -> pd.DataFrame:
    """Most bytes held at once per (location, owner) in one run, the last by default. Mapped weights count:
    they are where the weights are read from."""
    if not len(lifetimes):
        return pd.DataFrame(columns=["location", "owner", "bytes"])
    chosen = lifetimes[lifetimes["run"] == (lifetimes["run"].max() if run is None else run)]
    line = timeline(chosen, include_mapped=True)
    grouped = line.groupby(["location", "owner"], observed=True)["bytes"].max()
    return grouped.rename("bytes").reset_index()


def split_imbalance(weights_by_location: pd.Series, requested: list[float] | None,
                    devices: pd.DataFrame, layer_bytes: tuple[int, ...] = ()) -> pd.DataFrame:
    """Weight bytes per offload device against the split asked for.

    `weights_by_location`: weight bytes per location. The split is the one asked for or, when none was, the
    engine's default (free memory of each device). Only non-host locations with weights take part: the host keeps
    the layers not offloaded and the token embeddings. `tolerance` is one layer's share: a layer split cannot do
    better."""
    offload = weights_by_location.drop(labels=[HOST], errors="ignore")
    offload = offload[offload > 0]
    columns = ["location", "bytes", "share", "requested_share", "deviation", "tolerance", "split_source"]
    if len(offload) < 2:
        return pd.DataFrame(columns=columns)
    # the split lists devices in the engine's order: by name and number (CUDA0, CUDA1; RPC0, RPC1)
    names = sorted(offload.index, key=lambda name: [int(part) if part.isdigit() else part
                                                     for part in re.split(r"(\d+)", str(name))])
    offload = offload.reindex(names)
    if requested and len(requested) >= len(names):
        # the split lists every device the engine offloads to, in device order; zeros drop a device
        nonzero = [r for r in requested if r > 0]
        weights = np.array(nonzero[:len(names)], np.float64) if len(nonzero) >= len(names) else None
        source = "asked (--tensor-split)"
    else:
        weights, source = None, None
    if weights is None:
        free = devices.set_index("device")["memory_free"] if len(devices) else pd.Series(dtype=float)
        weights = np.array([float(free.get(name, np.nan)) for name in names])
        source = "engine default (free memory)"
    requested_share = weights / np.nansum(weights)
    total = offload.sum()
    largest_layer = max(layer_bytes) if layer_bytes else 0
    return pd.DataFrame({
        "location": names, "bytes": offload.to_numpy(np.int64), "share": offload.to_numpy() / total,
        "requested_share": requested_share,
        "deviation": offload.to_numpy() / total - requested_share,
        "tolerance": largest_layer / total if total else 0.0,
        "split_source": source,
    })


def held_now(buffer: pd.DataFrame) -> pd.DataFrame:
    """Bytes each location holds now, per owner (from the `buffer` events read so far): location, owner, bytes.
    Buffers over a mapped model file count as '<owner> (mapped file)'."""
    if not len(buffer):
        return pd.DataFrame(columns=["location", "owner", "bytes"])
    lifetimes = buffer_lifetimes(buffer)
    alive = lifetimes[lifetimes["free_ns"].isna()]
    owners = alive["owner"].astype(str).where(~alive["mapped"].astype(bool), alive["owner"].astype(str) + MAPPED)
    held = alive.assign(owner=owners).groupby(["location", "owner"], sort=True)["size"].sum()
    return held.rename("bytes").reset_index()
