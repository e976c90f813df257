"""Column helpers for large traces: string columns stay categorical (one Python string per distinct value, not per
row), and per-value functions run once per distinct value."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd


def text(series: pd.Series) -> pd.Series:
    """`series` as a categorical of strings (missing values stay missing), cheaply when it is categorical."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        categories = series.cat.categories
        if all(isinstance(c, str) for c in categories):
            return series
        return series.cat.rename_categories([str(c) for c in categories])
    codes, uniques = pd.factorize(series)
    labels = pd.Index([str(u) for u in uniques]).unique()
    return pd.Series(pd.Categorical.from_codes(codes, categories=labels) if len(labels) == len(uniques)
                     else pd.Categorical(series.astype(str)), index=series.index, name=series.name)


def per_value(series: pd.Series, function: Callable[[str], object], dtype) -> np.ndarray:
    """function(value) for every row, computed once per distinct value."""
    column = text(series)
    codes = column.cat.codes.to_numpy()
    results = np.array([function(c) for c in column.cat.categories], dtype=dtype)
    if not len(results):
        return np.empty(len(codes), dtype=dtype)
    return results[codes]


def prefixed(series: pd.Series, prefix: str) -> pd.Categorical:
    """'<prefix><value>' for every row, as a categorical."""
    column = text(series)
    return column.cat.rename_categories([prefix + c for c in column.cat.categories]).array
