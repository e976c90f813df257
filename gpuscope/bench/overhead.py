"""`gpuscope bench overhead`: what the hooks cost, measured with the engine's own llama-bench.

Three arms run interleaved (A B C A B C ...) so that machine drift hits all of them alike:
  recording  the patched build with a ring open and drained by this process (`gpuscope record`),
  hooks-off  the same patched build with no ring (every hook costs one predictable branch),
  unpatched  the build's `--no-hooks` twin.
Each run is `llama-bench -p 0 -n N -d DEPTH -r 1 -o json`; the figure is decode throughput (tokens/s), and the
ratios are medians over rounds.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from gpuscope.engine.build import Build, find_build, twin_command
from gpuscope.errors import EngineNotFoundError, GpuscopeError
from gpuscope.models.default import default_model
from gpuscope.runs.record import record

ARMS = ("recording", "hooks_off", "unpatched")


def _tg_rate(output: str) -> float:
    """Decode tokens/s from llama-bench's JSON output."""
    start = output.find("[")
    try:
        results = json.loads(output[start:])
        return float(results[0]["avg_ts"])
    except (ValueError, IndexError, KeyError) as exc:
        raise GpuscopeError(f"could not read llama-bench's JSON output ({exc}): {output[-500:]}") from None


def _bench_args(model: Path, depth: int, n_gen: int, extra: list[str]) -> list[str]:
    return ["-m", str(model), "-p", "0", "-n", str(n_gen), "-d", str(depth), "-r", "1", "-o", "json", *extra]


def run_arm(arm: str, bench: dict[str, Path], args: list[str], scratch: Path) -> float:
    if arm == "recording":
        trace = record([str(bench["patched"]), *args], scratch / "overhead.trace", quiet=True,
                       stdout=subprocess.PIPE)
        if trace.meta["exit"]["returncode"] != 0:
            raise GpuscopeError(f"llama-bench {trace.meta['exit']['how']} while recording")
        if not trace.meta["ring"].get("opened"):
            raise GpuscopeError("the patched llama-bench emitted no event: are its hooks compiled in?")
        return _tg_rate(trace.meta["stdout"])
    program = bench["patched" if arm == "hooks_off" else "unpatched"]
    env_without_ring = {k: v for k, v in os.environ.items() if k != "GPUSCOPE_RING"}
    done = subprocess.run([str(program), *args], capture_output=True, text=True, env=env_without_ring)
    if done.returncode != 0:
        raise GpuscopeError(f"{program} failed ({done.returncode}): {done.stderr[-1000:]}")
    return _tg_rate(done.stdout)


def measure(bench: dict[str, Path], model: Path, depths: list[int], rounds: int, n_gen: int,
            extra: list[str]) -> dict:
    rates: dict[tuple[int, str], list[float]] = {(d, arm): [] for d in depths for arm in ARMS}
    with tempfile.TemporaryDirectory(prefix="gpuscope-overhead-") as scratch:
        for round_index in range(rounds):
            for depth in depths:
                for arm in ARMS:
                    rate = run_arm(arm, bench, _bench_args(model, depth, n_gen, extra), Path(scratch))
                    rates[(depth, arm)].append(rate)
                    print(f"  round {round_index + 1}/{rounds} depth {depth:>6} {arm:9} {rate:10.2f} t/s",
                          file=sys.stderr)
    results: dict = {"rounds": rounds, "n_gen": n_gen, "model": str(model), "depths": {}}
    for depth in depths:
        median = {arm: statistics.median(rates[(depth, arm)]) for arm in ARMS}
        results["depths"][str(depth)] = {
            **{f"tg_ts_{arm}": median[arm] for arm in ARMS},
            # cost as a fraction of throughput lost against the unpatched twin
            "cost_recording": 1 - median["recording"] / median["unpatched"],
            "cost_hooks_off": 1 - median["hooks_off"] / median["unpatched"],
        }
    return results


def unhooked_twin(hooked: Build, baseline: str | None) -> Build:
    """The build to measure `hooked` against: `baseline` (default: NAME-nohooks), which must have no hooks."""
    default = f"{hooked.name}-nohooks"
    name = baseline or default
    try:
        twin = find_build(name)
    except EngineNotFoundError:
        raise EngineNotFoundError(f"no unhooked twin {name!r} of build {hooked.name!r} to measure against: make "
                                  f"it with `{twin_command(hooked, name)}`") from None
    if twin.meta["hooks"]:
        raise EngineNotFoundError(f"build {name!r} has the hooks, so it cannot stand for the unpatched engine: make "
                                  f"the twin with `{twin_command(hooked, default)}`"
                                  + (" and leave out --baseline" if name != default else ""))
    return twin


def default_bench_model() -> Path:
    return default_model()
