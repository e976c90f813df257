"""Where a recording's cost per decode step comes from: the engine's emits, or the recorder beside it.

    python3 benchmarks/gpu/recording_cost.py --model M --depth 0 4096 --rounds 5 --n-gen 128 [--budget-s S] -- ARGS

Four arms of the hooked build's llama-bench (`-p 0 -n N -d DEPTH -r 1`, ARGS after `--`), interleaved per round:
  hooks_off     no ring (every hook one predictable branch)
  ring_alone    a ring the engine writes and nobody drains (the emits' own cost)
  recorded      `gpuscope record` draining the ring live and rewriting the trace (what `bench overhead` measures)
  recorded_mono the same with CLOCK_MONOTONIC timestamps instead of the TSC
  recorded_noflush   recorded, with no rewrite of the trace while the program runs (only the one at its end)
  recorded_slowdrain recorded, draining every 0.5 s instead of every 50 ms
The last two set the recorder's pacing constants in this process (gpuscope.runs.record), to tell which of its
activities beside the engine costs the engine time; `--arms` picks the arms.
For each ring_alone run it also counts the records of the decode steps (llama-bench's last N single-token steps),
by kind, per token: what the engine emits per step at that depth. Prints one line per run and a JSON summary.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpuscope.bench import overhead
from gpuscope.engine.build import find_build
from gpuscope.ring.reader import RingReader
from gpuscope.runs import record as recorder

ARMS = ("hooks_off", "ring_alone", "recorded", "recorded_mono", "recorded_noflush", "recorded_slowdrain")
PACING = {"recorded_noflush": ("_FLUSH_INTERVAL_S", 1e9), "recorded_slowdrain": ("_DRAIN_INTERVAL_S", 0.5)}


def records_per_token(ring: Path, n_gen: int) -> dict[str, float]:
    """Records per decoded token, by kind, from the first of the run's last `n_gen` single-token steps on."""
    with RingReader(ring) as reader:
        tables = reader.read_all()
    begins = tables["decode_begin"]
    steps = begins[begins["n_tokens"] == 1].sort_values("ts_ns").tail(n_gen)
    since = int(steps["ts_ns"].iloc[0])
    counts = {kind: int((table["ts_ns"] >= since).sum()) / n_gen for kind, table in tables.items()}
    return {kind: count for kind, count in sorted(counts.items()) if count}


@contextlib.contextmanager
def arm_settings(arm: str):
    """The ring's clock and the recorder's pacing as `arm` asks, in this process, for the length of one run."""
    clock_before = os.environ.pop("GPUSCOPE_RING_CLOCK", None)
    if arm == "recorded_mono":
        os.environ["GPUSCOPE_RING_CLOCK"] = "monotonic"
    name, value = PACING.get(arm, (None, None))
    pacing_before = getattr(recorder, name) if name else None
    if name:
        setattr(recorder, name, value)
    try:
        yield
    finally:
        if name:
            setattr(recorder, name, pacing_before)
        os.environ.pop("GPUSCOPE_RING_CLOCK", None)
        if clock_before is not None:
            os.environ["GPUSCOPE_RING_CLOCK"] = clock_before


def run_arm(arm: str, program: Path, args: list[str], scratch: Path, n_gen: int) -> tuple[float, dict]:
    """Decode tokens/s of one run, and for ring_alone the records per token by kind."""
    with arm_settings(arm):
        if arm != "ring_alone":
            return overhead.run_arm("hooks_off" if arm == "hooks_off" else "recording", {"patched": program},
                                    args, scratch), {}
        ring = scratch / "alone.ring"
        done = subprocess.run([str(program), *args], capture_output=True, text=True,
                              env={**os.environ, "GPUSCOPE_RING": str(ring)})
    if done.returncode != 0:
        raise SystemExit(f"{program} failed ({done.returncode}): {done.stderr[-1000:]}")
    counts = records_per_token(ring, n_gen)
    ring.unlink()
    return overhead._tg_rate(done.stdout), counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--depth", type=int, nargs="+", default=[0, 4096])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n-gen", type=int, default=128)
    parser.add_argument("--build", default=None)
    parser.add_argument("--budget-s", type=float, default=None, help="start no round after this many seconds")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS[:4]))
    parser.add_argument("extra", nargs="*")
    options = parser.parse_args()
    program = find_build(options.build).program("llama-bench")
    started = time.monotonic()
    rates: dict[str, dict[str, list[float]]] = {str(d): {arm: [] for arm in options.arms} for d in options.depth}
    per_token: dict[str, dict] = {str(d): {} for d in options.depth}  # of the latest ring_alone run
    with tempfile.TemporaryDirectory(prefix="gpuscope-cost-", dir="/dev/shm") as scratch:
        for round_index in range(options.rounds):
            if options.budget_s is not None and time.monotonic() - started > options.budget_s:
                print(f"  stopped after {round_index} rounds: time budget", file=sys.stderr)
                break
            for depth in options.depth:
                args = overhead._bench_args(Path(options.model), depth, options.n_gen, options.extra)
                for arm in options.arms:
                    rate, counts = run_arm(arm, program, args, Path(scratch), options.n_gen)
                    rates[str(depth)][arm].append(rate)
                    if counts:
                        per_token[str(depth)] = counts
                    print(f"  round {round_index + 1} depth {depth:>6} {arm:18} {rate:9.2f} t/s", file=sys.stderr)
    summary = {"n_gen": options.n_gen, "model": options.model, "extra": options.extra, "depths": {}}
    for depth, arms in rates.items():
        median = {arm: statistics.median(values) for arm, values in arms.items() if values}
        summary["depths"][depth] = {
            "tg_ts": arms,
            "median": median,
            "cost_vs_hooks_off": {arm: 1 - median[arm] / median["hooks_off"] for arm in median if arm != "hooks_off"},
            "records_per_token": per_token[depth],
        }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
