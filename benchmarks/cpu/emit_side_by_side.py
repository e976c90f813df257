"""The ring's emit cost against the ring writer of another commit, interleaved in one run.

Compiles this checkout's emit benchmark (native_hooks/tools/ring_bench.c) twice: with this checkout's ring writer
and with `native_hooks/gpuscope_ring.{c,h}` and `gpuscope_events.h` as they were at `--against`, then runs the two
programs alternately and prints the median of each figure over the rounds. One benchmark program measures both,
with the same timer and baselines, so their ratio holds where the absolute figures are noisy.

    python3 benchmarks/cpu/emit_side_by_side.py --against COMMIT [--rounds 9]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from at_commit import source_at
from gpuscope.ring.native import CFLAGS, _compiler, native_hooks_dir, ring_tool

FIGURES = ("emit_ns_p50_1t", "emit_ns_p99_1t", "emit_ns_p50_2t", "emit_ns_p99_2t", "rdtsc_ns_p50",
           "record_floor_ns_p50", "clock_gettime_ns_p50", "mutex_ring_ns_p50_1t", "disabled_emit_ns_p50")
RING_FILES = ("gpuscope_ring.c", "gpuscope_ring.h", "gpuscope_events.h")


def bench_against(commit: str, folder: Path) -> Path:
    """This checkout's benchmark program built on the ring writer of `commit`."""
    (folder / "tools").mkdir()
    for name in RING_FILES:
        (folder / name).write_text(source_at(commit, f"native_hooks/{name}"))
    for name in ("ring_bench.c", "ring_file.h"):
        shutil.copy(native_hooks_dir() / "tools" / name, folder / "tools" / name)
    program = folder / "ring-bench"
    subprocess.run([*_compiler(), *CFLAGS, str(folder / "tools" / "ring_bench.c"), str(folder / "gpuscope_ring.c"),
                    "-o", str(program)], check=True)
    return program


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="the commit whose ring writer to compare with")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpuscope-emit-") as folder:
        programs = {"this checkout": ring_tool("gpuscope-ring-bench"), args.against: bench_against(args.against,
                                                                                                 Path(folder))}
        runs: dict[str, list[dict]] = {name: [] for name in programs}
        for _ in range(args.rounds):
            for name, program in programs.items():
                done = subprocess.run([str(program)], capture_output=True, text=True, check=True)
                runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{args.rounds} interleaved rounds, medians in ns (net of the batch timer):")
    print(f"  {'figure':24}" + "".join(f"{name:>16}" for name in programs))
    for figure in FIGURES:
        medians = [statistics.median(run[figure] for run in runs[name]) for name in programs]
        print(f"  {figure:24}" + "".join(f"{value:16.2f}" for value in medians))


if __name__ == "__main__":
    main()
