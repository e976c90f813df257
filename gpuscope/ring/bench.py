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
import sys
import tempfile
import time
from pathlib import Path

from gpuscope.cli import command_group
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


def _run(args) -> int:
    print("gpuscope bench ring: emit cost (C, 1 and 2 producer threads, with baselines) ...", file=sys.stderr)
    results = emit_costs()
    print(f"gpuscope bench ring: drain throughput ({args.records:,} records) ...", file=sys.stderr)
    results.update(drain_throughput(args.records))
    rows = [
        ("emit, 1 thread", results["emit_ns_p50_1t"], results["emit_ns_p99_1t"], "ns/event"),
        ("emit, 2 threads", results["emit_ns_p50_2t"], results["emit_ns_p99_2t"], "ns/event"),
        ("emit, no ring open", results["disabled_emit_ns_p50"], None, "ns/event"),
        ("baseline: clock_gettime", results["clock_gettime_ns_p50"], None, "ns/call"),
        ("baseline: mutex ring, 1 thread", results["mutex_ring_ns_p50_1t"], None, "ns/event"),
        ("baseline: mutex ring, 2 threads", results["mutex_ring_ns_p50_2t"], None, "ns/event"),
    ]
    print(f"{'measure':34} {'p50':>10} {'p99':>10}  unit")
    for name, p50, p99, unit in rows:
        print(f"{name:34} {p50:10.1f} {'' if p99 is None else f'{p99:10.1f}':>10}  {unit}")
    print(f"{'drain into numpy':34} {results['drain_records_per_s_numpy'] / 1e6:10.1f} {'':>10}  M records/s")
    print(f"{'drain a live ring into numpy':34} {results['drain_records_per_s_live'] / 1e6:10.1f} {'':>10}  "
          "M records/s")
    print(f"{'drain into pandas DataFrames':34} {results['drain_records_per_s_pandas'] / 1e6:10.1f} {'':>10}  "
          "M records/s")
    if args.json:
        print(json.dumps(results))
    return 0


def register(subparsers) -> None:
    bench = command_group(subparsers, "bench", help="benchmarks that print their figures")
    parser = bench.add_parser("ring", help="emit cost and drain throughput of the shared-memory ring")
    parser.add_argument("--json", action="store_true", help="end with one JSON object of all figures")
    parser.add_argument("--records", type=int, default=4_000_000, help="records in the drain benchmark")
    parser.set_defaults(func=_run)
