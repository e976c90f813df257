"""`gpuscope bench ring`: the ring's emit cost and drain throughput, with baselines measured in the same run.

Emit costs come from the C benchmark program (native_hooks/tools/ring_bench.c): per-event cost with one and two
producer threads beside a bare clock_gettime and a mutex-protected ring, so ratios stand on a noisy machine.
Drain throughput is measured here, in Python, on a ring the C program filled: records per second into numpy
(`RingReader.drain`) and into pandas DataFrames (`drain` + `decode`).
"""
from __future__ import annotations

import fcntl
import json
import subprocess
import tempfile
import time
from pathlib import Path

from gpuscope.errors import GpuscopeError
from gpuscope.ring.native import ring_tool
from gpuscope.ring.reader import RingReader


def emit_costs() -> dict[str, float]:
    """Run the C emit benchmark; its last output line is one JSON object."""
    done = subprocess.run([str(ring_tool("gpuscope-ring-bench"))], capture_output=True, text=True)
    if done.returncode != 0:
        raise GpuscopeError(f"ring benchmark failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def drain_throughput(records: int, repeats: int = 5) -> dict[str, float]:
    """Best-of-`repeats` records/s opening and draining a full ring of `records` into numpy and into DataFrames,
    once closed (one copy per record) and once with its lock held as a live writer holds it (three copies)."""
    with tempfile.TemporaryDirectory(prefix="gpuscope-bench-", dir=_shm_or_tmp()) as folder:
        path = Path(folder, "drain.ring")
        subprocess.run([str(ring_tool("gpuscope-ring-bench")), "--fill", str(path), "--records", str(records)],
                       check=True, capture_output=True)
        best = {"numpy": float("inf"), "pandas": float("inf"), "live": float("inf")}
        for _ in range(repeats):
            numpy_s, pandas_s = _timed_drain(path, records)
            best["numpy"], best["pandas"] = min(best["numpy"], numpy_s), min(best["pandas"], pandas_s)
            with open(path, "rb") as writer_lock:
                fcntl.flock(writer_lock, fcntl.LOCK_EX)
                best["live"] = min(best["live"], _timed_drain(path, records)[0])
    return {"drain_records": records,
            "drain_records_per_s_numpy": records / best["numpy"],
            "drain_records_per_s_pandas": records / best["pandas"],
            "drain_records_per_s_live": records / best["live"]}


def _timed_drain(path: Path, records: int) -> tuple[float, float]:
    """Seconds to open and drain the ring, and to open, drain and decode it."""
    start = time.perf_counter()
    with RingReader(path) as reader:
        raw = reader.drain()
        drained = time.perf_counter()
        reader.decode(raw)
        decoded = time.perf_counter()
        if raw.size != records:
            raise GpuscopeError(f"drained {raw.size} of {records} records (lost {reader.lost})")
    return drained - start, decoded - start


def _shm_or_tmp() -> str | None:
    return "/dev/shm" if Path("/dev/shm").is_dir() else None
