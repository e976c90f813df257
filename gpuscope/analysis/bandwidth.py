"""Memory bandwidth of the devices a trace ran on: the denominator of the bandwidth floor.

Three sources, best first: what the caller measured or states (`--bandwidth CUDA0=3050`), what the trace's
maker measured (`meta["bandwidth_gbps"]`, device name -> GB/s), and a table of vendors' peak figures matched
on the device description the engine reported. A peak figure makes the floor optimistic (a read-only reduction
reached 3.05 of the H100's 3.35 TB/s), so efficiencies against it are a little pessimistic: say which was used.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd

# Vendor peak memory bandwidth, GB/s, matched case-insensitively on the device description (first match wins,
# so more specific names come first).
KNOWN_DEVICES_GBPS: tuple[tuple[str, float], ...] = (
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),          # SXM5 80GB HBM3
    ("GH200", 4000.0),
    ("B200", 8000.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),          # 40GB
    ("L40S", 864.0),
    ("L40", 864.0),
    ("L4", 300.0),
    ("A10G", 600.0),
    ("A10", 600.0),
    ("V100", 900.0),
    ("T4", 320.0),
    ("RTX 5090", 1792.0),
    ("RTX 4090", 1008.0),
    ("RTX 4080", 717.0),
    ("RTX 3090", 936.0),
    ("RTX 3080", 760.0),
    ("RTX A6000", 768.0),
    ("RTX 6000 Ada", 960.0),
    ("MI300X", 5300.0),
    ("MI250X", 3277.0),
)

# ggml_backend_dev_type (ggml-backend.h)
DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}


def known_bandwidth(description: str) -> float | None:
    """Peak GB/s of a device by its description, None when the table does not know it."""
    text = (description or "").lower()
    for name, gbps in KNOWN_DEVICES_GBPS:
        if name.lower() in text:
            return gbps
    return None


def device_table(device_info: pd.DataFrame) -> pd.DataFrame:
    """One row per device the engine described: name, description, backend, type, memory."""
    columns = ["device", "description", "backend", "type", "memory_total", "memory_free"]
    if not len(device_info):
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    frame = pd.DataFrame({
        "device": device_info["name"].astype(str).to_numpy(),
        "description": device_info["description"].astype(str).to_numpy(),
        "backend": device_info["backend"].astype(str).to_numpy(),
        "type": [DEVICE_TYPES.get(int(t), f"type{int(t)}") for t in device_info["dev_type"]],
        "memory_total": device_info["memory_total"].to_numpy(np.int64),
        "memory_free": device_info["memory_free"].to_numpy(np.int64),
    })
    return frame.drop_duplicates("device", keep="first").reset_index(drop=True)


def resolve_bandwidth(devices: pd.DataFrame, meta: dict, given: dict[str, float] | None = None) -> pd.DataFrame:
    """Bandwidth per device in bytes/s with where it came from ('given', 'measured', 'peak table')."""
    given = given or {}
    measured = meta.get("bandwidth_gbps") or {}
    rows = []
    for device in devices.itertuples(index=False):
        if device.device in given:
            rows.append((device.device, given[device.device] * 1e9, "given"))
        elif device.device in measured:
            rows.append((device.device, float(measured[device.device]) * 1e9, "measured"))
        elif (peak := known_bandwidth(device.description)) is not None:
            rows.append((device.device, peak * 1e9, f"peak table ({device.description})"))
        else:
            rows.append((device.device, np.nan, "unknown"))
    for name, gbps in given.items():  # a device the trace did not describe (an older trace, a merged one)
        if name not in set(devices["device"]):
            rows.append((name, gbps * 1e9, "given"))
    return pd.DataFrame(rows, columns=["device", "bytes_per_s", "source"])


def measure_copy_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """This machine's host memory bandwidth in GB/s, from the best of a few large copies (read + write bytes).
    Meaningful for a trace only when it was recorded on this machine."""
    source = np.ones(megabytes << 20, dtype=np.uint8)
    target = np.empty_like(source)
    np.copyto(target, source)  # fault the pages in
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.nbytes / best / 1e9
