"""Statistics the analyses share: a robust straight-line fit with confidence intervals, change points of a
piecewise-linear trend, and bootstrap intervals for a difference of medians. All vectorised numpy."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

_HUBER_K = 1.345  # 95% efficiency under normal noise, bounded influence of outliers (stalls, preemptions)


@dataclass(frozen=True)
class LineFit:
    intercept: float
    slope: float
    intercept_ci: tuple[float, float]
    slope_ci: tuple[float, float]
    scale: float          # robust residual scale (MAD of residuals)
    n: int

    def at(self, x):
        return self.intercept + self.slope * np.asarray(x, np.float64)


def robust_line(x: np.ndarray, y: np.ndarray, confidence: float = 0.95, max_iter: int = 50) -> LineFit | None:
    """y = a + b x by Huber M-estimation (iteratively reweighted least squares), with sandwich (heteroskedasticity
    robust) standard errors. None when there are fewer than 3 points."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = len(x)
    if n < 3:
        return None
    x_mean = x.mean()
    xc = x - x_mean
    flat = not np.any(xc)  # a single context: only a level to estimate
    design = np.column_stack([np.ones(n), xc])
    weights = np.ones(n)
    beta = np.array([np.median(y), 0.0])
    scale = 0.0
    for _ in range(max_iter):
        beta_new = _weighted_lstsq(design, y, weights, flat)
        residual = y - design @ beta_new
        scale = 1.4826 * np.median(np.abs(residual - np.median(residual)))
        if scale <= 0:
            beta = beta_new
            break
        u = np.abs(residual) / (_HUBER_K * scale)
        weights = np.where(u <= 1, 1.0, 1.0 / np.maximum(u, 1e-12))
        converged = np.allclose(beta_new, beta, rtol=1e-9, atol=1e-9 * max(1.0, abs(beta[0])))
        beta = beta_new
        if converged:
            break
    residual = y - design @ beta
    t = sps.t.ppf(0.5 + confidence / 2, max(n - 2, 1))
    if flat:
        se_a = np.sqrt(np.sum((weights * residual) ** 2)) / max(weights.sum(), 1e-12)
        se = np.array([se_a, 0.0])
    else:
        bread = np.linalg.pinv(design.T @ (design * weights[:, None]))
        meat = design.T @ (design * ((weights * residual) ** 2)[:, None])
        cov = bread @ meat @ bread * n / max(n - 2, 1)
        se = np.sqrt(np.clip(np.diag(cov), 0, None))
    slope = float(beta[1])
    intercept = float(beta[0] - slope * x_mean)
    # the intercept's error at x = 0 combines both coefficients
    se_intercept = float(np.sqrt(se[0] ** 2 + (x_mean * se[1]) ** 2)) if not flat else float(se[0])
    return LineFit(intercept=intercept, slope=slope,
                   intercept_ci=(intercept - t * se_intercept, intercept + t * se_intercept),
                   slope_ci=(slope - t * float(se[1]), slope + t * float(se[1])),
                   scale=float(scale), n=n)


def _weighted_lstsq(design: np.ndarray, y: np.ndarray, weights: np.ndarray, flat: bool) -> np.ndarray:
    if flat:
        return np.array([np.sum(weights * y) / np.sum(weights), 0.0])
    root = np.sqrt(weights)
    beta, *_ = np.linalg.lstsq(design * root[:, None], y * root, rcond=None)
    return beta


@dataclass(frozen=True)
class Bins:
    x: np.ndarray       # median x of each bin
    y: np.ndarray       # median y
    n: np.ndarray       # points per bin
    lo: np.ndarray      # x range of each bin
    hi: np.ndarray


def bin_medians(x: np.ndarray, y: np.ndarray, max_bins: int = 120) -> Bins:
    """Medians of y over bins of x: one bin per distinct x when there are few, else bins of equal counts."""
    order = np.argsort(x, kind="stable")
    x, y = np.asarray(x, np.float64)[order], np.asarray(y, np.float64)[order]
    distinct, starts = np.unique(x, return_index=True)
    if len(distinct) > max_bins:
        # cut at distinct-value boundaries close to equal-count positions
        wanted = np.linspace(0, len(x), max_bins + 1)[1:-1]
        cuts = np.unique(starts[np.clip(np.searchsorted(starts, wanted), 0, len(starts) - 1)])
        starts = np.concatenate([[0], cuts[cuts > 0]])
    ends = np.append(starts[1:], len(x))
    med_x = np.array([np.median(x[s:e]) for s, e in zip(starts, ends)])
    med_y = np.array([np.median(y[s:e]) for s, e in zip(starts, ends)])
    return Bins(x=med_x, y=med_y, n=ends - starts, lo=x[starts], hi=x[ends - 1])


def _segment_costs(x, y, w):
    """Weighted least-squares SSE of a line over every prefix, from running sums (O(n))."""
    sw, sx, sy = np.cumsum(w), np.cumsum(w * x), np.cumsum(w * y)
    sxx, sxy, syy = np.cumsum(w * x * x), np.cumsum(w * x * y), np.cumsum(w * y * y)
    return sw, sx, sy, sxx, sxy, syy


def _sse(sums, start: int, end: int) -> float:
    """SSE of the weighted line over bins [start, end)."""
    sw, sx, sy, sxx, sxy, syy = (s[end - 1] - (s[start - 1] if start else 0.0) for s in sums)
    vx = sxx - sx * sx / sw
    vy = syy - sy * sy / sw
    cxy = sxy - sx * sy / sw
    return float(max(vy - (cxy * cxy / vx if vx > 1e-12 else 0.0), 0.0))


def breakpoints(bins: Bins, *, min_bins: int = 3, max_breaks: int = 4, p_value: float = 1e-3,
                min_change: float = 0.05) -> list[int]:
    """Bin indices where a piecewise-linear trend changes level or slope (binary segmentation).

    A split is kept when it is significant (F-test of one line against two, p < `p_value`) and material: the two
    lines disagree at the split by more than `min_change` of the median level."""
    x, y, w = bins.x, bins.y, bins.n.astype(np.float64)
    m = len(x)
    if m < 2 * min_bins:
        return []
    sums = _segment_costs(x, y, w)
    level = float(np.median(y)) if len(y) else 0.0
    found: list[int] = []
    segments = [(0, m)]
    while segments and len(found) < max_breaks:
        best = None
        for start, end in segments:
            split = _best_split(x, y, w, sums, start, end, min_bins, p_value, min_change * abs(level))
            if split is not None and (best is None or split[1] > best[1]):
                best = (split[0], split[1], start, end)
        if best is None:
            break
        k, _, start, end = best
        found.append(k)
        segments.remove((start, end))
        segments += [(start, k), (k, end)]
    return sorted(found)


def _best_split(x, y, w, sums, start, end, min_bins, p_value, min_jump):
    n = end - start
    if n < 2 * min_bins:
        return None
    whole = _sse(sums, start, end)
    candidates = range(start + min_bins, end - min_bins + 1)
    costs = np.array([_sse(sums, start, k) + _sse(sums, k, end) for k in candidates])
    best_index = int(np.argmin(costs))
    k = start + min_bins + best_index
    split_cost = costs[best_index]
    dof = n - 4
    if dof <= 0 or whole <= 0:
        return None
    f_stat = ((whole - split_cost) / 2) / max(split_cost / dof, 1e-300)
    if sps.f.sf(f_stat, 2, dof) >= p_value:
        return None
    left = _line(x[start:k], y[start:k], w[start:k])
    right = _line(x[k:end], y[k:end], w[k:end])
    # material: the level on either side (the nearest bins' medians) or the slope over the shorter side changed
    near = min(3, k - start, end - k)
    level_change = abs(float(np.median(y[k:k + near])) - float(np.median(y[k - near:k])))
    slope_change = abs(right[1] - left[1]) * min(x[k - 1] - x[start], x[end - 1] - x[k])
    if max(level_change, slope_change) < min_jump:
        return None
    return k, f_stat


def _line(x, y, w):
    if len(x) < 2 or np.ptp(x) == 0:
        return float(np.average(y, weights=w)), 0.0
    slope, intercept = np.polyfit(x, y, 1, w=np.sqrt(w))
    return float(intercept), float(slope)


def bootstrap_median_difference(a: np.ndarray, b: np.ndarray, *, confidence: float = 0.95,
                                resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """median(b) - median(a) with a percentile bootstrap interval (each sample resampled on its own)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    rng = np.random.default_rng(seed)
    # bound the resampling matrices at ~20M values whatever the sample sizes
    resamples = int(min(resamples, max(200, 20_000_000 // max(len(a), len(b), 1))))
    med_a = np.median(a[rng.integers(0, len(a), (resamples, len(a)))], axis=1)
    med_b = np.median(b[rng.integers(0, len(b), (resamples, len(b)))], axis=1)
    diff = med_b - med_a
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(diff, [tail, 100 - tail])
    return float(np.median(b) - np.median(a)), float(low), float(high)


def stratified_saving(before: pd.DataFrame, after: pd.DataFrame, *, confidence: float = 0.95, resamples: int = 2000,
                      seed: int = 0) -> tuple[float, float, float]:
    """What `after` saves against `before` per step: the mean over strata (column `stratum`, e.g. the context
    depth) of median(before) - median(after) of `value`, with a percentile bootstrap interval that resamples each
    stratum of each side on its own. Only strata both sides measured count: each weighs the same, as each depth
    of a sweep decodes the same number of steps."""
    strata = sorted(set(before["stratum"]) & set(after["stratum"]))
    if not strata:
        raise ValueError("the two sides share no stratum to compare")
    rng = np.random.default_rng(seed)
    estimate, draws = 0.0, np.zeros(resamples)
    for stratum in strata:
        a = before.loc[before["stratum"] == stratum, "value"].to_numpy(np.float64)
        b = after.loc[after["stratum"] == stratum, "value"].to_numpy(np.float64)
        estimate += np.median(a) - np.median(b)
        draws += (np.median(a[rng.integers(0, len(a), (resamples, len(a)))], axis=1)
                  - np.median(b[rng.integers(0, len(b), (resamples, len(b)))], axis=1))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws / len(strata), [tail, 100 - tail])
    return float(estimate / len(strata)), float(low), float(high)
