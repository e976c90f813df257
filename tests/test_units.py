"""Numbers as people read them (gpuscope.units): durations, binary sizes, shares, three significant digits, no
scientific notation for any magnitude a trace holds, and tables and text that keep to a width. Pure functions, and
one real recorded trace for the tables; under a second."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from gpuscope.analysis import Analysis
from gpuscope.doctor.rules import diagnose
from gpuscope.units import duration, human, label, number, share, size, speed_change, text_table, times_range, \
    unit_of, value, wrap

DATASETS = Path(__file__).resolve().parent.parent / "datasets"
SCIENTIFIC = re.compile(r"\d[eE][+-]?\d")


@pytest.mark.parametrize("ns, shown", [
    (1.596e9, "1.60 s"), (15.57e6, "15.6 ms"), (412e3, "412 µs"), (412, "412 ns"), (1.41e6, "1.41 ms"),
    (999.6e3, "1.00 ms"),  # rounds up into the next unit, not to '1000 µs'
    (0, "0 ns"), (-7.09e6, "-7.09 ms"), (3.6e12, "3600 s"),
])
def test_durations_take_the_unit_their_magnitude_asks(ns, shown) -> None:
    assert duration(ns) == shown


@pytest.mark.parametrize("n_bytes, shown", [
    (18328084480, "17.1 GiB"), (75.5e6, "72.0 MiB"), (262144, "256 KiB"), (512, "512 B"), (0, "0 B"),
    (-268435456, "-256 MiB"),
])
def test_sizes_are_binary(n_bytes, shown) -> None:
    assert size(n_bytes) == shown


def test_shares_are_percentages_of_three_digits() -> None:
    assert share(0.6578) == "65.8%" and share(0.92) == "92.0%" and share(1.0) == "100%"
    assert share(0.00123) == "0.123%" and share(1e-9) == "<0.001%" and share(float("nan")) == "-"


def test_three_significant_digits_and_exact_integers() -> None:
    assert [number(v) for v in (1.23456, 12.3456, 123.456, 0.0123456, 9.9996, 68.0)] == \
        ["1.23", "12.3", "123", "0.0123", "10.0", "68.0"]
    assert number(15957.3) == "15957"  # whole numbers past three digits, not 1.6e+04
    assert number(18328084480) == "18328084480" and number(True) == "yes"


def test_no_scientific_notation_for_any_magnitude_a_trace_holds() -> None:
    for exponent in range(-9, 19):
        for mantissa in (1.0, 1.5, 9.99):
            x = mantissa * 10.0 ** exponent
            for shown in (number(x), number(-x), duration(x), size(x), share(x), value(x, "bytes_per_step")):
                assert not SCIENTIFIC.search(shown), (x, shown)


def test_speed_ups_and_slow_downs_are_ratios() -> None:
    assert speed_change(15.57e6, 1.41e6) == "11.0x faster: 15.6 -> 1.41 ms/token, 64.2 -> 709 tokens/s"
    assert speed_change(1.0e6, 1.25e6) == "1.25x slower: 1.00 -> 1.25 ms/token, 1000 -> 800 tokens/s"
    # a batch of 512 tokens per step: per token, one unit for both
    assert speed_change(512e6, 256e6, n_tokens=512) == "2.00x faster: 1.00 -> 0.500 ms/token, 1000 -> 2000 tokens/s"
    assert times_range(13.587, 15.827) == "13.6-15.8x" and times_range(2.001, 1.999) == "2.00x"


def test_names_say_the_unit() -> None:
    assert [unit_of(n) for n in ("time_per_step_ns", "ms_per_token", "bytes_per_step", "size_needed",
                                 "bytes_per_s", "floor_share", "diff_pct", "slowdown", "head_size", "seq")] == \
        ["duration", "duration", "size", "size", "rate", "share", "percent", "ratio", "", "id"]
    assert [label(n) for n in ("time_per_step_ns", "ms_per_token", "median_a_ns", "ns", "n_gpu_layers")] == \
        ["time_per_step", "time_per_token", "median_a", "time", "n_gpu_layers"]
    assert value({"CPU": 1620197376, "CUDA0": 1376903168}, "weight_bytes_by_location") == "CPU 1.51 GiB, CUDA0 1.28 GiB"
    assert value([13.587, 15.827], "slowdown") == "13.6x, 15.8x" and value(list(range(12)), "depths").endswith(
        "... (12 in all)")


def test_a_fits_table_reads_with_its_intervals_in_one_cell() -> None:
    """The 17 columns of Analysis.fits (the issue's table whose useful columns sat past the scroll): each measure
    and its interval in one cell, every cell in its unit."""
    fits = Analysis(DATASETS / "traces" / "gpu-8b8l-fa-off.trace").fits
    shown = human(fits)
    assert len(shown.columns) == len(fits.columns) - 6
    row = fits.iloc[0]
    assert shown["intercept (interval)"].iloc[0] == (f"{duration(row.intercept_ns)} ("
                                                      f"{duration(row.intercept_ci_low).split()[0]} to "
                                                      f"{duration(row.intercept_ci_high).split()[0]})")
    assert not any(SCIENTIFIC.search(cell) for cell in shown.to_numpy().ravel())


@pytest.mark.parametrize("width", [60, 100, 160])
def test_tables_and_text_keep_to_the_width(width) -> None:
    finding = next(f for f in diagnose(Analysis(DATASETS / "h200-bench-doctor" / "kv-cache-on-the-host.trace"))
                   if f.id == "copies.cross-device")
    lines = text_table(finding.rows, width=width, rows=5, indent="    ")
    assert max(map(len, lines)) <= width and "5 of 3008 rows" in lines[-1]
    assert lines[0].split()[:3] == ["step", "src_device", "dst_device"]  # key columns first; seq, ts_ns last
    assert all(len(line) <= width for line in wrap(finding.statement + " " + "x" * 300, width, indent="  "))
    assert max(map(len, finding.to_text(width, rows=5).splitlines())) <= width
