"""`gpuscope collect kernels|stacks` (a sweep with a collector around each configuration), `gpuscope
import-rocprof` and `gpuscope export`."""
from __future__ import annotations

import sys
from pathlib import Path

from gpuscope.analysis.kernels import (fa_kernels_by_route, fa_route_summary, family_time_per_step, gpu_busy_per_step,
                                       profiled_windows)
from gpuscope.cli.options import command_group
from gpuscope.cli.options import depths as depths_option  # _session_options takes a default called depths
from gpuscope.cli.options import output_path
from gpuscope.collectors.rocprof import read_rocprof
from gpuscope.errors import GpuscopeError
from gpuscope.export.perfetto import export_perfetto
from gpuscope.runs.collect import KernelCollection, StackCollection
from gpuscope.runs.sweep import sweep
from gpuscope.session.config import SplitConfig
from gpuscope.trace.model import Trace, load_trace, save_trace
from gpuscope.trace.steps import join_to_steps
from gpuscope.units import duration, number
from gpuscope.version import __version__


def _model(text: str):
    if text in (None, "default"):
        return None
    path = Path(text)
    if not path.is_file():
        raise GpuscopeError(f"model file not found: {path}")
    return path


def _session_options(parser, depths: str, steps: int) -> None:
    parser.add_argument("--out", "-o", required=True, help="trace folder to write")
    parser.add_argument("--model", "-m", default="default", help="GGUF model path, or 'default'")
    parser.add_argument("--engine", default=None, help="engine build folder or name (default: the default build)")
    parser.add_argument("--config", "-c", action="append", default=[], metavar="'KEY=VALUE ...'",
                        help="a split configuration (as for gpuscope sweep), repeatable")
    parser.add_argument("--depths", type=depths_option, default=depths_option(depths),
                        help=f"context depths (default {depths})")
    parser.add_argument("--steps", type=int, default=steps, help=f"decode steps per depth (default {steps})")
    parser.add_argument("--isolate", action="store_true", help="run each configuration in a worker process")


def _configs(texts: list[str]) -> list[SplitConfig]:
    return [SplitConfig.parse(text) for text in texts] or [SplitConfig()]


def _collect_kernels(args) -> int:
    trace = sweep(_configs(args.config), _model(args.model), engine=args.engine, depths=args.depths,
                  n_steps=args.steps, isolate=args.isolate, around=KernelCollection(baseline=not args.no_baseline),
                  out=args.out)
    _print_kernel_summary(trace)
    print(trace.path)
    return 0


def _print_kernel_summary(trace) -> None:
    kernels, steps = trace.tables["kernels"], trace.tables["steps"]
    profiled = steps[steps.get("kernel_profiler", "on") == "on"] if "kernel_profiler" in steps else steps
    decode = profiled[profiled["phase"] == "decode"]
    busy = gpu_busy_per_step(kernels, decode)
    for label, meta in trace.meta.get("kernels", {}).items():
        clock = meta["clock"]
        print(f"{label}: {sum(meta['activities'].values())} GPU activities; clock offset residual "
              f"{duration(clock['residual_ns'])} (drift {duration(clock['drift_ns'])})")
        for row in meta.get("cost", {}).get("per_depth", []):
            print(f"  depth {row['depth']:>6}: step {duration(row['median_step_ns_off'])} plain, "
                  f"{duration(row['median_step_ns_on'])} profiled ({number(row['overhead'] * 100, signed=True)}%)")
        if meta.get("warning"):
            print(f"  warning: {meta['warning']}")
    if len(busy):
        per_depth = busy.merge(decode[["step", "depth"]], on="step") if "depth" in decode else busy.assign(depth=0)
        print(per_depth.groupby(["device", "depth"])[["busy_fraction", "max_gap_ns"]].median().to_string())
        families = family_time_per_step(kernels, decode).groupby(["family", "fa_kind"])["time_ns"].sum()
        print((families / families.sum()).sort_values(ascending=False).round(3).to_string())
    matched = fa_kernels_by_route(kernels, trace.tables.get("fa_plan", kernels.iloc[:0]),
                                  profiled_windows(trace.meta))
    if len(matched):
        print(fa_route_summary(matched, kernels).to_string(index=False))


def _collect_stacks(args) -> int:
    trace = sweep(_configs(args.config), _model(args.model), engine=args.engine, depths=args.depths,
                  n_steps=args.steps, isolate=args.isolate, around=StackCollection(rate=args.rate), out=args.out)
    print(trace.path)
    return 0


def _import_rocprof(args) -> int:
    kernels = read_rocprof(args.input, offset_ns=args.offset_ns)
    if args.trace:
        trace = load_trace(args.trace)
        if "steps" in trace.tables:
            kernels = kernels.assign(in_step=join_to_steps(kernels, trace.tables["steps"]))
        trace.tables["kernels"] = kernels
        trace.meta["kernels"] = {"imported": {"collector": "rocprofv3", "input": str(args.input),
                                              "offset_ns": args.offset_ns}}
    else:
        trace = Trace(meta={"gpuscope_version": __version__, "source": "rocprofv3", "input": str(args.input),
                            "kernels": {"imported": {"collector": "rocprofv3", "offset_ns": args.offset_ns}}},
                      tables={"kernels": kernels})
    save_trace(trace, args.out)
    counts = kernels["category"].value_counts().to_dict()
    print(f"gpuscope import-rocprof: {counts} on {sorted(kernels['device'].unique())}", file=sys.stderr)
    print(trace.path)
    return 0


def _export(args) -> int:
    counts = export_perfetto(load_trace(args.trace), output_path(args.perfetto))
    print(f"gpuscope export: {counts['tracks']} tracks, {counts['slices']} slices, {counts['instants']} instants, "
          f"{counts['counter_values']} counter values, {counts['flows']} flows"
          + (f", {counts['clipped']} slices cut to nest" if counts["clipped"] else ""), file=sys.stderr)
    print(counts["path"])
    return 0


def register(subparsers) -> None:
    collect = command_group(subparsers, "collect", help="record a workload with a collector beside the hooks")
    kernels = collect.add_parser(
        "kernels", help="context sweep with GPU kernels recorded by torch's profiler (CUDA/ROCm torch needed)",
        description="Runs each configuration's sweep twice in the engine's process, plain then under torch's "
                    "profiler, and writes one trace with a `kernels` table and the collection's cost. Example: "
                    "gpuscope collect kernels -o k.trace -m model.gguf -c 'n_gpu_layers=99 flash_attn=on'")
    _session_options(kernels, "0,512,1024", 16)
    kernels.add_argument("--no-baseline", action="store_true", help="skip the plain pass (no cost measurement)")
    kernels.set_defaults(func=_collect_kernels)

    stacks = collect.add_parser(
        "stacks", help="context sweep with native CPU stacks sampled by py-spy",
        description="py-spy samples the engine's process (this one, or the worker with --isolate) during a "
                    "sweep; the trace gets a `cpu_stacks` table attributed to ggml/llama.cpp functions.")
    _session_options(stacks, "0,256", 8)
    stacks.add_argument("--rate", type=int, default=100, help="py-spy samples per second (default 100)")
    stacks.set_defaults(func=_collect_stacks)

    rocprof = subparsers.add_parser(
        "import-rocprof", help="import rocprofv3 kernel / memory-copy traces (CSV or rocpd .db) as a kernels table",
        description="INPUT: a rocpd database (.db), a kernel_trace.csv or memory_copy_trace.csv, or a rocprofv3 "
                    "output folder. With --trace the kernels join that trace (a copy goes to --out).")
    rocprof.add_argument("input", type=Path)
    rocprof.add_argument("--out", "-o", required=True, help="trace folder to write")
    rocprof.add_argument("--trace", default=None, help="a gpuscope trace of the same run to attach the kernels to")
    rocprof.add_argument("--offset-ns", type=int, default=0,
                         help="profile clock minus the trace's CLOCK_MONOTONIC, ns (default 0: same clock)")
    rocprof.set_defaults(func=_import_rocprof)

    export = subparsers.add_parser("export", help="write a trace in another tool's format (Perfetto)",
                                   description="Example: gpuscope export run.trace --perfetto run.pftrace, then open "
                                               "it in ui.perfetto.dev or trace_processor_shell")
    export.add_argument("trace", help="trace folder")
    export.add_argument("--perfetto", required=True, metavar="OUT", help="Perfetto protobuf trace to write")
    export.set_defaults(func=_export)
