"""How noisy a run's step times are: each decode step against the median of its neighbours in the order they ran
(which follows the context's slow growth, so only the jitter is left), per configuration and batch size.

A machine busy with other work shows as steps that take several times their neighbours (the engine's threads wait
for a core) and as a wider scatter around the local level."""
from __future__ import annotations

import numpy as np
import pandas as pd

from gpuscope.analysis.verdict import decode_steps

NEIGHBOURS = 9  # the rolling window, in steps: wide enough that one slow step does not move its own median
OUTLIER_RATIO = 2.0  # a step this many times its neighbours' median is an outlier
COLUMNS = ["config", "n_tokens", "steps", "median_ns", "scatter_share", "outlier_share", "outliers", "worst_ratio"]


def local_ratio(wall_ns: pd.Series) -> pd.Series:
    """Each step's time over the rolling median of the NEIGHBOURS steps around it (in the order given)."""
    level = wall_ns.rolling(NEIGHBOURS, center=True, min_periods=3).median()
    return wall_ns / level


def step_noise(steps: pd.DataFrame) -> pd.DataFrame:
    """Per configuration and batch size, over its decode steps in the order they ran: steps, median step time,
    scatter_share (the median distance of a step from its neighbours' median, as a share of it), outlier_share and
    outliers (steps over OUTLIER_RATIO times that median), worst_ratio (the slowest step against it)."""
    decode = decode_steps(steps)
    rows = []
    for (config, n_tokens), group in decode.sort_values("t_begin_ns").groupby(["config", "n_tokens"], sort=False):
        ratio = local_ratio(group["wall_ns"].astype(float)).dropna()
        if len(ratio) < 3:
            continue
        outliers = int((ratio > OUTLIER_RATIO).sum())
        rows.append({"config": str(config), "n_tokens": int(n_tokens), "steps": int(len(ratio)),
                     "median_ns": float(group["wall_ns"].median()),
                     "scatter_share": float(np.median(np.abs(ratio - 1))), "outlier_share": outliers / len(ratio),
                     "outliers": outliers, "worst_ratio": float(ratio.max())})
    return pd.DataFrame(rows, columns=COLUMNS)
