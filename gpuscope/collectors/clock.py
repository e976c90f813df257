"""Putting a collector's clock on the trace clock (CLOCK_MONOTONIC) from markers.

Each collector makes markers its own output shows (a named range for torch's profiler, a uniquely named busy
function for py-spy) between two monotonic reads, and turns each marker into bounds [low, high] on the offset
between its clock and the monotonic one. The offset is what every marker allows: the middle of the intersection of
the bounds, with half its width as the residual. When the bounds do not intersect (the clocks drifted or stepped),
the median of the markers' middles is used and the residual covers every marker. `drift_ns` is the offset the last
half of the markers give minus the first half's.
"""
from __future__ import annotations

import numpy as np


def offset_from_bounds(lows, highs) -> dict:
    """offset_ns, residual_ns, markers, drift_ns and consistent from each marker's integer bounds (ns)."""
    low = np.asarray(lows, np.int64)
    high = np.asarray(highs, np.int64)
    lo, hi = int(low.max()), int(high.min())
    middles = (low + high) // 2
    if lo <= hi:
        offset, residual = (lo + hi) // 2, (hi - lo) // 2
    else:
        offset = int(np.median(middles))
        residual = int(max(np.abs(high - offset).max(), np.abs(low - offset).max()))
    half = len(middles) // 2
    drift = int(np.median(middles[half:]) - np.median(middles[:half])) if half else 0
    return {"offset_ns": offset, "residual_ns": residual, "markers": int(len(middles)), "drift_ns": drift,
            "consistent": lo <= hi}
