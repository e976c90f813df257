"""Numbers as people read them, for every renderer (the terminal, the HTML reports, plot hover text, notebooks):
durations in ns, µs, ms or s as the magnitude asks, sizes in binary units (KiB, MiB, GiB: never MB), shares as
percentages, three significant digits and never scientific notation; tables whose cells carry their units, key
columns first, cut to a width; text wrapped to a width.

A table column or an evidence key says its unit in its name, and that is how a value finds its format: a word
`ns`, `us` or `ms` is a duration (`time_per_step_ns`, `ms_per_token`), `bytes` or `memory` a size (`bytes_per_step`,
`memory_free`; `size_*` too, the allocator's columns), `share` or `efficiency` a fraction, `pct` a percentage,
`slowdown` a ratio. Anything else is a plain number."""
from __future__ import annotations

import math
import shutil
import textwrap

import numpy as np
import pandas as pd

SIGNIFICANT = 3
MISSING = "-"
ARROW = "->"
SMALLEST_PERCENT = 0.001  # a share below this many percent is said as '<0.001%'
MIB = 1 << 20
MIN_CELL = 8  # a table column is cut no narrower than this; columns that do not fit so are left out
# a list in running text stops here and says how long it was
LIST_ITEMS = 10
# the columns that say where a row came from, not what it measured: last in a table, shown as recorded
BOOKKEEPING = ("seq", "ts_ns", "at_ns", "tid", "pid", "process")
TIME_UNITS = {"ns": 1.0, "us": 1e3, "ms": 1e6}
SHARE_WORDS = {"share", "shares", "efficiency", "deviation", "tolerance", "acceptance"}
RATIO_WORDS = {"slowdown", "speedup", "ratio"}
_DURATION_STEPS = ((1e9, "s"), (1e6, "ms"), (1e3, "µs"), (1.0, "ns"))
_SIZE_STEPS = ((1 << 40, "TiB"), (1 << 30, "GiB"), (MIB, "MiB"), (1 << 10, "KiB"), (1, "B"))


def _missing(value) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, (float, np.floating))
                                                                 and math.isnan(value))


def number(value, *, signed: bool = False) -> str:
    """Three significant digits, no exponent: 0.000123, 1.23, 12.3, 123; a larger number is rounded to a whole
    one (15957, not 1.6e+04); an integer stays exact."""
    if _missing(value):
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    sign = "+" if signed else ""
    if isinstance(value, (int, np.integer)):
        return f"{int(value):{sign}d}"
    x = float(value)
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    rounded = float(f"{x:.{SIGNIFICANT}g}")
    if rounded == 0:
        return "0"
    if abs(x) >= 10 ** (SIGNIFICANT - 1):
        return f"{x:{sign}.0f}"
    decimals = SIGNIFICANT - 1 - math.floor(math.log10(abs(rounded)))
    return f"{rounded:{sign}.{decimals}f}"


def _step(value: float, steps) -> tuple[float, str]:
    """The largest unit the value (rounded to three digits) reaches, and its size."""
    rounded = abs(float(f"{float(value):.{SIGNIFICANT}g}"))
    return next(((size, unit) for size, unit in steps if rounded >= size), steps[-1])


def duration(ns, *, signed: bool = False) -> str:
    """'412 ns', '412 µs', '15.6 ms', '1.60 s'."""
    if _missing(ns):
        return MISSING
    size, unit = _step(ns, _DURATION_STEPS)
    return f"{number(float(ns) / size, signed=signed)} {unit}"


def duration_range(first_ns, last_ns, *, between: str = f" {ARROW} ", signed: bool = False) -> str:
    """Two durations in the unit of the larger, said once: '15.6 -> 1.41 ms' (before and after), with between=
    ' to ' '-7.14 to -6.99 ms' (an interval), with ' of ' '20.8 of 21.9 ms'."""
    known = [abs(float(v)) for v in (first_ns, last_ns) if not _missing(v)]
    step, unit = _step(max(known), _DURATION_STEPS) if known else (1.0, "ns")
    first, last = (MISSING if _missing(v) else number(float(v) / step, signed=signed) for v in (first_ns, last_ns))
    return f"{first}{between}{last} {unit}"


def size(n_bytes) -> str:
    """'512 B', '72.1 MiB', '17.1 GiB': binary units, as the engine allocates."""
    if _missing(n_bytes):
        return MISSING
    step, unit = _step(n_bytes, _SIZE_STEPS)
    return f"{number(float(n_bytes) / step if step > 1 else n_bytes)} {unit}"


def share(fraction) -> str:
    """A fraction as a percentage: 0.6578 -> '65.8%', 0.0012 -> '0.120%'; below a thousandth of a percent, so."""
    if _missing(fraction):
        return MISSING
    percent = float(fraction) * 100
    return f"{number(percent)}%" if percent == 0 or abs(percent) >= SMALLEST_PERCENT else f"<{SMALLEST_PERCENT}%"


def times(ratio) -> str:
    """'11.0x'."""
    return MISSING if _missing(ratio) else f"{number(float(ratio))}x"


def times_range(low, high) -> str:
    """'13.6x', or '13.6-15.8x' where the two differ."""
    first, last = number(float(low)), number(float(high))
    return f"{first}x" if first == last else f"{first}-{last}x"


def speed_change(before_ns, after_ns, n_tokens: int = 1) -> str:
    """From a time per step before to one after, as people say it: '11.0x faster: 15.6 -> 1.41 ms/token, 64.2 ->
    709 tokens/s', '1.25x slower: ...'. A step of n_tokens tokens: its time per token is its time / n_tokens."""
    before, after = float(before_ns) / n_tokens, float(after_ns) / n_tokens
    if not before > 0 or not after > 0:
        return f"{duration_range(before, after)}/token"
    faster = after < before
    ratio = before / after if faster else after / before
    direction = "as fast" if times(ratio) == "1.00x" else f"{times(ratio)} {'faster' if faster else 'slower'}"
    return (f"{direction}: {duration_range(before, after)}/token, "
            f"{number(1e9 / before)} {ARROW} {number(1e9 / after)} tokens/s")


def unit_of(name: str) -> str:
    """What a column or key measures, from the words of its name: 'duration', 'size', 'rate' (bytes per second),
    'share', 'percent', 'ratio', 'id' (bookkeeping) or '' (a plain number)."""
    name = str(name)
    if name in BOOKKEEPING:
        return "id"
    words = name.lower().replace(" ", "_").split("_")
    if {"bytes", "memory"} & set(words) or words[0] == "size":
        return "rate" if words[-2:] == ["per", "s"] else "size"
    if TIME_UNITS.keys() & set(words):
        return "duration"
    if SHARE_WORDS & set(words):
        return "share"
    if "pct" in words:
        return "percent"
    if RATIO_WORDS & set(words):
        return "ratio"
    return ""


def label(name: str) -> str:
    """A column or key as a heading, its unit left to the cells: 'time_per_step_ns' -> 'time_per_step',
    'ms_per_token' -> 'time_per_token', 'median_a_ns' -> 'median_a'; otherwise as named, so that the text and the
    JSON say the same."""
    words = str(name).split("_")
    if str(name) in BOOKKEEPING or not TIME_UNITS.keys() & set(words):
        return str(name)
    shown = []
    for i, word in enumerate(words):
        if word in TIME_UNITS:
            if i < len(words) - 1 and "time" not in words:
                shown.append("time")
            continue
        shown.append(word)
    return "_".join(shown) or "time"


def value(v, name: str = "") -> str:
    """One value, in the unit its name says (see unit_of); a list as its items, a flat dict as 'key value, ...'."""
    if isinstance(v, (list, tuple, np.ndarray, pd.Index)):
        items = [value(item, name) for item in list(v)[:LIST_ITEMS]]
        more = f" ... ({len(v)} in all)" if len(v) > LIST_ITEMS else ""
        return ", ".join(items) + more if items else "none"
    if isinstance(v, dict):
        return ", ".join(f"{k} {value(item, name if unit_of(name) else k)}" for k, item in v.items()) or "none"
    if _missing(v):
        return MISSING
    if isinstance(v, (bool, np.bool_)):
        return number(v)
    if not isinstance(v, (int, float, np.integer, np.floating)):
        return str(v)
    unit = unit_of(name)
    if unit == "id":
        return str(int(v)) if float(v).is_integer() else str(v)
    if unit == "duration":
        scale = next(TIME_UNITS[w] for w in str(name).lower().replace(" ", "_").split("_") if w in TIME_UNITS)
        return duration(float(v) * scale)
    if unit == "size":
        return size(v)
    if unit == "rate":
        return f"{size(v)}/s"
    if unit == "share":
        return share(v)
    if unit == "percent":
        return f"{number(v)}%"
    return times(v) if unit == "ratio" else number(v)


def as_table(v) -> pd.DataFrame | None:
    """Evidence that is a table: a list of records, or a dict of dicts (one row per key); None for anything else."""
    if isinstance(v, (list, tuple)) and v and all(isinstance(item, dict) for item in v):
        return pd.DataFrame(list(v))
    if isinstance(v, dict) and v and all(isinstance(item, dict) for item in v.values()):
        return pd.DataFrame.from_dict(v, orient="index").rename_axis("").reset_index()
    return None


def _bounds(columns) -> dict:
    """Each measured column with the columns of its interval: {'intercept_ns': ('intercept_ci_low',
    'intercept_ci_high'), 'slope_ns_per_cell': ('slope_ci_low', 'slope_ci_high')}."""
    names = [str(c) for c in columns]
    found = {}
    for low in names:
        if not low.endswith("_ci_low") or low[:-len("low")] + "high" not in names:
            continue
        base = low[:-len("_ci_low")]
        measured = next((m for m in names if (m == base or m.startswith(base + "_") and unit_of(m))
                         and not m.endswith(("_ci_low", "_ci_high"))), None)
        if measured is not None:
            found[measured] = (low, base + "_ci_high")
    return found


def human(frame: pd.DataFrame, *, unit_name: str = "") -> pd.DataFrame:
    """A table for people: each cell a string in its column's unit, headings without unit suffixes, a measure and
    its interval in one cell ('1.65 ms (1.64 to 1.67)'; the bounds take the measure's unit), bookkeeping
    columns (sequence numbers, timestamps, process ids) last. unit_name: the name whose unit applies to columns
    whose own names say none (a table of shares by category)."""
    bounds = _bounds(frame.columns)
    bound_columns = {c for pair in bounds.values() for c in pair}
    shown = pd.DataFrame(index=frame.index)
    for column in _key_first([c for c in frame.columns if str(c) not in bound_columns]):
        name = str(column) if unit_of(column) or not unit_name else unit_name
        cells = [value(v, name) for v in frame[column].tolist()]
        heading = label(column) if unit_of(column) or not unit_name else str(column)
        if str(column) in bounds:
            low, high = (frame[c].tolist() for c in bounds[str(column)])
            cells = [cell if _missing(lo) else _with_interval(cell, value(lo, name), value(hi, name))
                     for cell, lo, hi in zip(cells, low, high)]
            heading += " (interval)"
        shown[heading] = cells
    return shown.reset_index(drop=True)


def _with_interval(cell: str, low: str, high: str) -> str:
    """'-7.09 ms (-7.14 to -6.99)': the bounds without the unit where it is the measure's."""
    unit = " " + cell.split(" ")[-1] if " " in cell else ""
    if unit and low.endswith(unit) and high.endswith(unit):
        low, high = low.removesuffix(unit), high.removesuffix(unit)
    return f"{cell} ({low} to {high})"


def _key_first(columns) -> list:
    return [c for c in columns if c not in BOOKKEEPING] + [c for c in columns if c in BOOKKEEPING]


def _numeric(frame: pd.DataFrame, column) -> bool:
    return pd.api.types.is_numeric_dtype(frame[column]) and not pd.api.types.is_bool_dtype(frame[column])


def text_table(frame: pd.DataFrame, *, width: int, rows: int | None = None, indent: str = "",
               unit_name: str = "", max_cell: int = 40) -> list[str]:
    """A table as aligned lines no wider than `width`: its first `rows` rows, the columns that fit (in order, key
    columns first; those with no value at all left out), cells between the first and the last cut at max_cell, and
    a line that says what was left out."""
    if frame is None or not len(frame):
        return [f"{indent}(none)"]
    chosen = frame.head(rows) if rows is not None else frame
    chosen = chosen[[c for c in chosen.columns if chosen[c].notna().any()]]
    cells = human(chosen, unit_name=unit_name)
    bound_columns = {c for pair in _bounds(chosen.columns).values() for c in pair}
    right = [_numeric(chosen, c) for c in _key_first([c for c in chosen.columns if str(c) not in bound_columns])]
    room = max(width - len(indent), 20)
    columns, used = [], 0
    for i, heading in enumerate(cells.columns):
        column = [heading] + cells[heading].tolist()
        # the first column and the last may take what room there is; those between are cut at max_cell
        widest = room if not columns else room - used - 2 if i == len(cells.columns) - 1 else max_cell
        natural = max(map(len, column))
        size = min(natural, max(widest, min(len(heading), max_cell)))
        if columns and (used + 2 + size > room or size < min(natural, MIN_CELL)):
            break
        columns.append(([_cut(c, size) for c in column], size, right[i]))
        used += size + (2 if len(columns) > 1 else 0)
    lines = [indent + "  ".join(c[0][r].rjust(c[1]) if c[2] else c[0][r].ljust(c[1]) for c in columns).rstrip()
             for r in range(len(cells) + 1)]
    left_out = []
    if len(columns) < len(cells.columns):
        left_out.append(f"{len(cells.columns) - len(columns)} more columns: "
                        + ", ".join(cells.columns[len(columns):]))
    if len(chosen) < len(frame):
        left_out.append(f"{len(chosen)} of {len(frame)} rows")
    if left_out:
        lines += wrap(f"({'; '.join(left_out)})", width, indent=indent)
    return lines


def _cut(cell: str, size: int) -> str:
    return cell if len(cell) <= size else cell[:max(size - 1, 0)] + "…"


def wrap(text: str, width: int, *, indent: str = "", hanging: str | None = None) -> list[str]:
    """A paragraph as lines no wider than `width`, the first starting with `indent`, the others with `hanging`
    (default: indent and two spaces); words longer than a line are broken."""
    hanging = indent + "  " if hanging is None else hanging
    return textwrap.wrap(str(text), width=max(width, len(hanging) + 20), initial_indent=indent,
                         subsequent_indent=hanging, break_on_hyphens=False) or [indent]


def terminal_width() -> int:
    """The terminal's width, or COLUMNS, or 100 when the output goes to a file or a pipe."""
    return shutil.get_terminal_size((100, 24)).columns
