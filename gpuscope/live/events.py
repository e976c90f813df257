"""What a live dashboard derives from the events of a ring read so far (a RingTap): memory per configuration, and
the decode steps of a program that reports none itself."""
from __future__ import annotations

import pandas as pd

from gpuscope.analysis.memory import buffer_lifetimes
from gpuscope.analysis.steps import step_table
from gpuscope.trace.ringtap import RingTap


def hook_steps(tap: RingTap, program: str) -> pd.DataFrame:
    """Decode steps of a ring read so far, from its hook events (any engine program): step, config (`program` and
    its contexts), n_tokens, context, wall_ns, complete."""
    return step_table(tap.table("decode_begin"), tap.table("ubatch"), tap.table("decode_submitted"),
                      tap.table("decode_synced"), meta={"program": program})


def memory_per_config(buffer: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """What each configuration held, from the `buffer` events and the steps (config, t_begin_ns, t_end_ns) read
    so far: per configuration and location, held_bytes at its last step and peak_bytes over its part of the run
    (from the end of the previous configuration's last step), so both stay when its session has freed them."""
    columns = ["config", "location", "held_bytes", "peak_bytes"]
    if not len(buffer) or not len(steps):
        return pd.DataFrame(columns=columns)
    lifetimes = buffer_lifetimes(buffer)
    alloc = lifetimes["alloc_ns"].to_numpy(float)
    free = lifetimes["free_ns"].to_numpy(float)
    ends = steps.groupby("config", sort=False)["t_end_ns"].max().sort_values()
    rows, since = [], -float("inf")
    for config, end in ends.items():
        for location, part in lifetimes.groupby("location", sort=True):
            index = part.index.to_numpy()
            size = part["size"].to_numpy(float)

            def held_at(t: float) -> float:
                return float(size[(alloc[index] <= t) & ~(free[index] <= t)].sum())

            moments = [t for t in alloc[index] if since < t <= end] + [end]
            rows.append({"config": str(config), "location": str(location), "held_bytes": held_at(end),
                         "peak_bytes": max(held_at(t) for t in moments)})
        since = end
    frame = pd.DataFrame(rows, columns=columns)
    return frame[frame["peak_bytes"] > 0].reset_index(drop=True)
