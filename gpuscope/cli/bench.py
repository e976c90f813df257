"""`gpuscope bench ...`: benchmarks that print their figures (gpuscope.bench): the ring's emit cost and drain
throughput, the engine's decode throughput with and without hooks, analysis time against event count, the live
dashboard's cost to the engine, SQL query time against the number of traces, and the Prometheus exporter's cost
against the engine's step time."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from gpuscope.bench import analysis as analysis_bench
from gpuscope.bench import doctor as doctor_bench
from gpuscope.bench import live as live_bench
from gpuscope.bench import metrics as metrics_bench
from gpuscope.bench import overhead as overhead_bench
from gpuscope.bench import query as query_bench
from gpuscope.bench import ring as ring_bench
from gpuscope.cli.options import command_group, counts, depths, output_path
from gpuscope.engine.build import find_build
from gpuscope.metrics.exporter import DEFAULT_INTERVAL_S
from gpuscope.query import DEFAULT_MEMORY_LIMIT
from gpuscope.models import default_model
from gpuscope.units import duration, share as percent, size, terminal_width, text_table


def register(subparsers) -> None:
    bench = command_group(subparsers, "bench", help="benchmarks that print their figures")
    _register_ring(bench)
    _register_overhead(bench)
    _register_analysis(bench)
    _register_live(bench)
    _register_doctor(bench)
    _register_query(bench)
    _register_metrics(bench)


def _ring(args) -> int:
    print("gpuscope bench ring: emit cost (C, 1 and 2 producer threads, with baselines) ...", file=sys.stderr)
    results = ring_bench.emit_costs()
    print(f"gpuscope bench ring: drain throughput ({args.records:,} records) ...", file=sys.stderr)
    results.update(ring_bench.drain_throughput(args.records))
    rows = [
        ("emit, 1 thread", results["emit_ns_p50_1t"], results["emit_ns_p99_1t"], "ns/event"),
        ("emit, 2 threads", results["emit_ns_p50_2t"], results["emit_ns_p99_2t"], "ns/event"),
        ("emit, no ring open", results["disabled_emit_ns_p50"], None, "ns/event"),
        ("baseline: clock_gettime", results["clock_gettime_ns_p50"], None, "ns/call"),
        *([("baseline: rdtsc", results["rdtsc_ns_p50"], None, "ns/call"),
           ("floor: rdtsc + one record's stores", results["record_floor_ns_p50"], results["record_floor_ns_p99"],
            "ns/event")] if "rdtsc_ns_p50" in results else []),
        ("baseline: one locked fetch-add", results["locked_rmw_ns_p50"], None, "ns/call"),
        ("baseline: mutex ring, 1 thread", results["mutex_ring_ns_p50_1t"], None, "ns/event"),
        ("baseline: mutex ring, 2 threads", results["mutex_ring_ns_p50_2t"], None, "ns/event"),
    ]
    print(f"{'measure':34} {'p50':>10} {'p99':>10}  unit  (net of the batch timer, "
          f"{results['timer_ns']:.0f} ns a batch of {results['batch']})")
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


def _register_ring(bench) -> None:
    parser = bench.add_parser("ring", help="emit cost and drain throughput of the shared-memory ring")
    parser.add_argument("--json", action="store_true", help="end with one JSON object of all figures")
    parser.add_argument("--records", type=int, default=4_000_000, help="records in the drain benchmark")
    parser.set_defaults(func=_ring)


def _overhead(args) -> int:
    hooked = find_build(args.engine)
    bench = {"patched": hooked.program("llama-bench"),
             "unpatched": overhead_bench.unhooked_twin(hooked, args.baseline).program("llama-bench")}
    model = Path(args.model) if args.model else overhead_bench.default_bench_model()
    print(f"gpuscope bench overhead: {args.engine} vs its unpatched twin, {args.rounds} interleaved rounds",
          file=sys.stderr)
    results = overhead_bench.measure(bench, model, args.depth, args.rounds, args.n_gen, args.extra)
    print(f"{'depth':>6} {'recording t/s':>14} {'hooks off t/s':>14} {'unpatched t/s':>14} "
          f"{'cost rec.':>10} {'cost off':>10}")
    for depth, row in results["depths"].items():
        print(f"{depth:>6} {row['tg_ts_recording']:14.2f} {row['tg_ts_hooks_off']:14.2f} "
              f"{row['tg_ts_unpatched']:14.2f} {row['cost_recording']:10.2%} {row['cost_hooks_off']:10.2%}")
    if args.json:
        print(json.dumps(results))
    return 0


def _register_overhead(bench) -> None:
    parser = bench.add_parser("overhead", help="decode throughput with recording on, hooks off, and unpatched")
    parser.add_argument("--engine", required=True, help="name of a hooked engine build")
    parser.add_argument("--baseline", help="name of its unpatched twin (default: ENGINE-nohooks)")
    parser.add_argument("--model", help="GGUF to decode (default: the default model)")
    parser.add_argument("--depth", type=int, nargs="+", default=[0, 8192], help="context depths")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per arm")
    parser.add_argument("--n-gen", type=int, default=64, help="tokens generated per run")
    parser.add_argument("--json", action="store_true", help="end with one JSON object of all figures")
    parser.add_argument("extra", nargs="*", help="more llama-bench arguments after --, e.g. -- -ngl 99 -fa 1")
    parser.set_defaults(func=_overhead)


def _analysis(args) -> int:
    results = analysis_bench.run(args.events, Path(args.trace) if args.trace else None, args.engine, Path(args.keep) if args.keep else None)
    if args.json:
        print(json.dumps(results))
    return 0


def _register_analysis(bench) -> None:
    parser = bench.add_parser(
        "analysis", help="load and doctor time against event count, on copies of a real recorded trace",
        description="Scales a real recorded trace (copies shifted in time, sequence and step) to each event count "
                    "and times loading it and running the doctor, each size in a fresh process.")
    parser.add_argument("--events", type=counts, default="1e6,1e7", help="event counts, comma-separated (default 1e6,1e7)")
    parser.add_argument("--trace", help="the real trace to scale (default: record one now with the CPU build)")
    parser.add_argument("--engine", help="engine build to record the source trace with (default: the CPU build)")
    parser.add_argument("--keep", help="folder to keep the scaled traces in")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of all figures")
    parser.set_defaults(func=_analysis)


def _live(args) -> int:
    result = live_bench.measure(args.model, args.config, args.engine, args.depths, args.steps, args.rounds, args.interval)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    low, high = result["difference_ci_ms"]
    print(f"model {result['model']}, depths {result['depths']}, {result['steps_per_depth']} steps per depth, "
          f"{result['rounds']} rounds of each, dashboard refresh every {result['interval_s']} s")
    print(f"{'condition':<22} {'steps':>6} {'median ms/step':>15}")
    for mode in ("plain", "dashboard"):
        label = "without the dashboard" if mode == "plain" else "with the dashboard"
        print(f"{label:<22} {result['steps'][mode]:>6} {result['median_ms'][mode]:>15.3f}")
    print(f"difference (with - without): {result['difference_ms']:+.3f} ms ({result['difference_pct']:+.1f}%), "
          f"95% interval {low:+.3f} to {high:+.3f} ms")
    print(f"dashboard: {result['refreshes']} refreshes, {result['ms_per_refresh']:.1f} ms of CPU each on average "
          "(its first refresh and the doctor's runs included)")
    return 0


def _register_live(bench) -> None:
    parser = bench.add_parser(
        "live", help="engine step time with the live dashboard open against without it",
        description="In a Jupyter kernel driven by nbclient (the widget messages really flow), one session decodes "
                    "the same sweep in alternating rounds, plain and under a live dashboard, and compares the "
                    "decode step times.")
    parser.add_argument("--model", default="default", help="GGUF path, or 'default'")
    parser.add_argument("--config", default="", help="split configuration, as for gpuscope sweep")
    parser.add_argument("--engine", default=None, help="engine build name or folder (default: the hooked CPU build)")
    parser.add_argument("--depths", type=depths, default=[0, 256, 512], help="context depths (default 0,256,512)")
    parser.add_argument("--steps", type=int, default=16, help="decode steps per depth and round (default 16)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of each condition (default 4)")
    parser.add_argument("--interval", type=float, default=0.25, help="dashboard refresh interval, s (default 0.25)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=_live)


def _doctor(args) -> int:
    build = find_build(args.engine)
    results = doctor_bench.run(build, args.rounds, output_path(args.keep, folder=True) if args.keep else None)
    rows = []
    for result in results:
        measured = result.measured or {}
        low, high = measured.get("ci_ms") or (None, None)
        rows.append({"scenario": result.scenario, "rule": result.rule or "(clean)",
                     "found": None if result.rule is None else result.found, "predicted_ms": result.predicted_ms,
                     "measured_ms": measured.get("saving_ms"), "measured_ms_ci_low": low, "measured_ms_ci_high": high,
                     "within_target": result.within_target})
    print("\n".join(text_table(pd.DataFrame(rows), width=terminal_width())))
    for result in results:
        for alarm in result.false_alarms:
            print(f"false alarm in {result.scenario}: {alarm}")
    if build.meta["backend"] == "cpu":
        for name, why in doctor_bench.NOT_ON_CPU.items():
            print(f"{name:<46} not run on the CPU engine: {why}")
    problems = [r for r in results if r.rule is not None]
    timed = [r for r in results if r.within_target is not None]
    print(f"\nproblems found by their rule: {sum(r.found is not None for r in problems)} of {len(problems)}; "
          f"false warnings or criticals: {sum(len(r.false_alarms) for r in results)}; predicted savings within "
          f"30% (or 3 points of the step) of the measured: {sum(bool(r.within_target) for r in timed)} of "
          f"{len(timed)} (milliseconds per decode step or per generated token; {args.rounds} interleaved rounds)")
    if args.json:
        print(json.dumps([r.to_dict() for r in results], default=str))
    return 0


def _register_doctor(bench) -> None:
    parser = bench.add_parser(
        "doctor", help="the doctor against the fix: scenario pairs on the CPU engine, predicted against measured",
        description="Runs each scenario's problem and its fix in interleaved rounds on the hooked CPU engine "
                    "(a synthetic tiny llama, one thread, two local RPC devices), or with a CUDA build the GPU set "
                    "(a synthetic 1B), and prints, per scenario, whether its rule found the problem, the predicted "
                    "and the measured saving, and every false alarm.")
    parser.add_argument("--engine", default=None, help="hooked engine build, CPU or CUDA (default: the CPU build)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per scenario (default 3)")
    parser.add_argument("--keep", metavar="DIR", help="save each scenario's problem and fixed runs as traces in DIR")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of every result")
    parser.set_defaults(func=_doctor)


def _query(args) -> int:
    results = query_bench.run(args.traces, Path(args.trace) if args.trace else None, args.memory_limit)
    if args.json:
        print(json.dumps(results))
    return 0


def _register_query(bench) -> None:
    parser = bench.add_parser(
        "query", help="SQL query time and peak memory against the number of traces, on copies of a real trace",
        description="Copies a real recorded trace under distinct names (by default the two-H200 tensor-split "
                    "kernels trace of datasets/) to each count and times opening the set and three queries (a "
                    "streaming aggregate, one joined to the traces' meta, and a DISTINCT that grows with the rows), "
                    "each count in a fresh process for its peak RSS.")
    parser.add_argument("--traces", type=counts, default="1,10,100", help="trace counts, comma-separated (default 1,10,100)")
    parser.add_argument("--trace", help="the real trace to copy (default: datasets/h200x2-splits/x2-kernels-tensor)")
    parser.add_argument("--memory-limit", default=DEFAULT_MEMORY_LIMIT,
                        help=f"DuckDB's memory limit (default {DEFAULT_MEMORY_LIMIT})")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of all figures")
    parser.set_defaults(func=_query)


def _metrics(args) -> int:
    build = find_build(args.engine)
    model = Path(args.model) if args.model else default_model()
    print(f"gpuscope bench metrics: llama-server of {build.meta['name']} on {model.name}, {args.rounds} rounds of "
          f"{args.requests} requests without and with the exporter ...", file=sys.stderr)
    result = metrics_bench.measure(build.program("llama-server"), model, rounds=args.rounds, requests=args.requests,
                                   n_predict=args.n_predict, interval_s=args.interval)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    arms, cost = result["arms"], result["exporter"]
    print(f"{'engine step':<12} {'without: steps':>15} {'median':>10} {'with: steps':>12} {'median':>10}")
    for phase in ("decode", "prefill"):
        plain, followed = arms["without"][phase], arms["with"][phase]
        print(f"{phase:<12} {plain['steps']:>15} {_ms(plain['median_ms']):>10} {followed['steps']:>12} "
              f"{_ms(followed['median_ms']):>10}")
    print(f"exporter (polling every {result['interval_s']:g} s): {duration(cost['cpu_s'] * 1e9)} of CPU in "
          f"{duration(cost['followed_s'] * 1e9)} followed ({percent(cost['share_of_a_core'])} of a core), "
          f"{cost['polls']} polls ({duration(cost['cpu_ms_per_poll'] * 1e6)} each)")
    print(f"per engine step ({cost['steps_followed']} followed): {duration(cost['cpu_us_per_step'] * 1e3)} of the "
          f"exporter's CPU, {percent(cost['share_of_decode_step'])} of the median decode step")
    print(f"a scrape: {duration(cost['scrape_ms'] * 1e6)}, {size(cost['scrape_bytes'])}, {cost['series']} series")
    return 0


def _ms(value: float | None) -> str:
    return "-" if value is None else duration(value * 1e6)


def _register_metrics(bench) -> None:
    parser = bench.add_parser("metrics", help="the exporter's cost against the engine's step time (llama-server)")
    parser.add_argument("--engine", default="cpu", help="the hooked build whose llama-server runs (default cpu)")
    parser.add_argument("--model", help="the model (default: the default model)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each condition (default 3)")
    parser.add_argument("--requests", type=int, default=3, help="completions per round (default 3)")
    parser.add_argument("--n-predict", type=int, default=32, help="tokens generated per completion (default 32)")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S,
                        help=f"the exporter's poll interval, s (default {DEFAULT_INTERVAL_S:g}, as gpuscope metrics)")
    parser.add_argument("--json", action="store_true", help="print every figure as JSON instead")
    parser.set_defaults(func=_metrics)
