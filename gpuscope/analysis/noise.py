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


def rolling_level(wall_ns) -> pd.Series:
    """The rolling median of the NEIGHBOURS steps around each step (in the order given): the run's local level."""
    return pd.Series(wall_ns, dtype=float).rolling(NEIGHBOURS, center=True, min_periods=3).median()


def noise_of(wall_ns) -> dict | None:
    """How one series of step times (in the order they ran) scatters around its rolling median: steps,
    scatter_share (the median distance of a step from its neighbours' median, as a share of it), outlier_share and
    outliers (steps over OUTLIER_RATIO times that median), worst_ratio (the slowest step against it); None for
    fewer than three steps."""
    wall = pd.Series(wall_ns, dtype=float).reset_index(drop=True)
    ratio = (wall / rolling_level(wall)).dropna()
    if len(ratio) < 3:
        return None
    outliers = int((ratio > OUTLIER_RATIO).sum())
    return {"steps": int(len(ratio)), "scatter_share": float(np.median(np.abs(ratio - 1))),
            "outlier_share": outliers / len(ratio), "outliers": outliers, "worst_ratio": float(ratio.max())}


def step_noise(steps: pd.DataFrame) -> pd.DataFrame:
    """noise_of each configuration's and batch size's decode steps, in the order they ran, with their median."""
    decode = decode_steps(steps)
    rows = []
    for (config, n_tokens), group in decode.sort_values("t_begin_ns").groupby(["config", "n_tokens"], sort=False):
        noise = noise_of(group["wall_ns"])
        if noise is not None:
            rows.append({"config": str(config), "n_tokens": int(n_tokens),
                         "median_ns": float(group["wall_ns"].median()), **noise})
    return pd.DataFrame(rows, columns=COLUMNS)
