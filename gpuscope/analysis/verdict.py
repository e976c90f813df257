"""The configurations of a trace side by side: per configuration and depth, decode time per token, tokens per second,
growth with context and the share of the bandwidth floor reached; which configuration is fastest at each depth and
how much slower each other one is.

A decode step is one token per sequence (n_tokens == n_seqs); the depth of a step is where its run of contexts starts
(a sweep decodes a few steps at each depth, so contexts come in runs: a gap wider than `DEPTH_GAP` cells starts a new
depth), rounded down to a multiple of 256 cells as sweeps choose them. Growth with context is the configuration's
fit over at least `MIN_GROWTH_RANGE` cells (shorter ranges give a slope of noise)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from gpuscope.analysis.steps import is_decode

DEPTH_GAP = 32
MIN_GROWTH_RANGE = 1024
_COLUMNS = ["config", "depth", "steps", "ms_per_token", "p25_ms", "p75_ms", "tokens_per_s", "growth_ms_per_1k",
            "floor_share", "rank", "fastest", "slowdown", "ms_behind", "separated"]


def decode_steps(steps: pd.DataFrame) -> pd.DataFrame:
    """Complete, timed decode steps (one token per sequence), cold starts left out."""
    keep = steps["complete"] & steps["wall_ns"].notna() & ~steps["cold_start"].astype(bool)
    keep &= is_decode(steps)
    return steps[keep]


def depths(context: pd.Series) -> pd.Series:
    """The depth each step's context belongs to (see the module's docstring)."""
    if not len(context):
        return pd.Series(dtype=np.int64, index=context.index)
    order = context.sort_values(kind="stable")
    starts = order.where(order.diff().fillna(DEPTH_GAP + 1) > DEPTH_GAP).ffill()
    return ((starts - 1).clip(lower=0) // 256 * 256).astype(np.int64).reindex(context.index)


def config_table(steps: pd.DataFrame, fits: pd.DataFrame, floor: pd.DataFrame | None) -> pd.DataFrame:
    """One row per (configuration, depth) of decode steps, ranked within each depth (1: fastest); `slowdown` is the
    ratio to the fastest configuration at that depth, `ms_behind` the difference per token."""
    decode = decode_steps(steps)
    if "role" in decode.columns:  # a draft model's steps are part of its target's configuration, not one to rank
        decode = decode[decode["role"].fillna("target").astype(str) == "target"]
    if not len(decode):
        return pd.DataFrame(columns=_COLUMNS)
    decode = decode.assign(depth=decode.groupby("config", sort=False)["context"].transform(depths))
    efficiency = floor.set_index("step")["efficiency"] if floor is not None and len(floor) else pd.Series(dtype=float)
    wide = fits[(fits["n_tokens"] == 1) & (fits["context_max"] - fits["context_min"] >= MIN_GROWTH_RANGE)] \
        if len(fits) else fits
    one_token = wide.set_index("config")["slope_ns_per_cell"] if len(wide) else pd.Series(dtype=float)
    rows = []
    for (config, depth), group in decode.groupby(["config", "depth"], sort=False):
        token_ns = group["wall_ns"] / group["n_tokens"]
        per_token = float(token_ns.median())
        reached = efficiency.reindex(group["step"]).dropna()
        slope = float(one_token.get(config, np.nan))
        rows.append({"config": config, "depth": int(depth), "steps": int(len(group)),
                     "ms_per_token": per_token / 1e6, "p25_ms": float(token_ns.quantile(0.25)) / 1e6,
                     "p75_ms": float(token_ns.quantile(0.75)) / 1e6,
                     "tokens_per_s": 1e9 / per_token if per_token > 0 else np.nan,
                     "growth_ms_per_1k": slope * 1000 / 1e6 if np.isfinite(slope) else np.nan,
                     "floor_share": float(reached.median()) if len(reached) else np.nan})
    table = pd.DataFrame(rows)
    fastest = table.loc[table.groupby("depth")["ms_per_token"].idxmin()].set_index("depth")
    best = table["depth"].map(fastest["ms_per_token"])
    table["rank"] = table.groupby("depth")["ms_per_token"].rank(method="first").astype(int)
    table["fastest"] = table["depth"].map(fastest["config"])
    table["slowdown"] = table["ms_per_token"] / best
    table["ms_behind"] = table["ms_per_token"] - best
    # slower beyond the noise: its lower quartile above the fastest one's upper quartile (steps of one configuration
    # vary by seconds where the machine stalls)
    table["separated"] = (table["rank"] > 1) & (table["p25_ms"] > table["depth"].map(fastest["p75_ms"]))
    return table.sort_values(["depth", "rank"], ignore_index=True)[_COLUMNS]


def slower_configs(table: pd.DataFrame) -> pd.DataFrame:
    """Per configuration that is slower than the fastest beyond the noise (`separated`) at some depth: those depths,
    its smallest and largest slowdown there and the time per token it gives away (median over those depths);
    `never_fastest` (it is the fastest at none of its depths) and over all its depths the mean time per token and
    the mean it gives away (`ms_per_token_mean`, `ms_behind_mean`: what a sweep's steps, as many per depth, cost)."""
    rows = []
    for config, group in table.groupby("config", sort=False):
        behind = group[group["separated"]]
        if not len(behind):
            continue
        rows.append({"config": config, "fastest": behind["fastest"].mode().iloc[0], "depths": behind["depth"].tolist(),
                     "depths_measured": int(len(group)), "slowdown_min": float(behind["slowdown"].min()),
                     "slowdown_max": float(behind["slowdown"].max()),
                     "ms_per_token": float(behind["ms_per_token"].median()),
                     "ms_behind": float(behind["ms_behind"].median()),
                     "never_fastest": bool((group["rank"] > 1).all()),
                     "ms_per_token_mean": float(group["ms_per_token"].mean()),
                     "ms_behind_mean": float(group["ms_behind"].clip(lower=0).mean())})
    return pd.DataFrame(rows, columns=["config", "fastest", "depths", "depths_measured", "slowdown_min",
                                       "slowdown_max", "ms_per_token", "ms_behind", "never_fastest",
                                       "ms_per_token_mean", "ms_behind_mean"])


# a band of the step-time plot spans at most this many cells of one depth's run (a long decode gets one per stretch)
BAND_CELLS = 256
# fewer steps than this give no spread worth drawing
BAND_MIN_STEPS = 3


def step_time_bands(steps: pd.DataFrame) -> pd.DataFrame:
    """Per configuration, batch size and stretch of context (a depth's run of steps, cut every BAND_CELLS cells):
    the steps' median time and interquartile range at the stretch's median context, cold starts left out (they pay
    one-time costs). Columns: config, n_tokens, depth, context, steps, median_ns, p25_ns, p75_ns."""
    columns = ["config", "n_tokens", "depth", "context", "steps", "median_ns", "p25_ns", "p75_ns"]
    timed = steps[steps["complete"] & steps["wall_ns"].notna() & ~steps["cold_start"].astype(bool)]
    if not len(timed):
        return pd.DataFrame(columns=columns)
    depth = timed.groupby(["config", "n_tokens"], sort=False)["context"].transform(depths)
    stretch = depth + (timed["context"] - depth) // BAND_CELLS * BAND_CELLS
    bands = timed.assign(depth=depth, stretch=stretch).groupby(["config", "n_tokens", "depth", "stretch"],
                                                                sort=False).agg(
        context=("context", "median"), steps=("wall_ns", "size"), median_ns=("wall_ns", "median"),
        p25_ns=("wall_ns", lambda w: w.quantile(0.25)), p75_ns=("wall_ns", lambda w: w.quantile(0.75)))
    bands = bands[bands["steps"] >= BAND_MIN_STEPS].reset_index()
    return bands.sort_values(["config", "n_tokens", "context"], kind="stable", ignore_index=True)[columns]


def config_ranking(steps: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration, fastest first: its decode steps (cold starts left out) at every depth together,
    their median time per token with its interquartile range, tokens per second, and how many times slower than the
    fastest configuration it is (`slowdown`)."""
    columns = ["rank", "config", "ms_per_token", "p25_ms", "p75_ms", "tokens_per_s", "slowdown", "steps", "depths"]
    decode = decode_steps(steps)
    if "role" in decode.columns:
        decode = decode[decode["role"].fillna("target").astype(str) == "target"]
    if not len(decode):
        return pd.DataFrame(columns=columns)
    rows = []
    for config, group in decode.groupby("config", sort=False):
        token_ns = group["wall_ns"] / group["n_tokens"]
        per_token = float(token_ns.median())
        rows.append({"config": config, "ms_per_token": per_token / 1e6,
                     "p25_ms": float(token_ns.quantile(0.25)) / 1e6, "p75_ms": float(token_ns.quantile(0.75)) / 1e6,
                     "tokens_per_s": 1e9 / per_token if per_token > 0 else np.nan, "steps": int(len(group)),
                     "depths": int(depths(group["context"]).nunique())})
    table = pd.DataFrame(rows).sort_values("ms_per_token", kind="stable", ignore_index=True)
    table["rank"] = np.arange(1, len(table) + 1)
    table["slowdown"] = table["ms_per_token"] / table["ms_per_token"].iloc[0]
    return table[columns]
