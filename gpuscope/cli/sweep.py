"""`gpuscope sweep`: step time against context depth for one or more split configurations, as one trace."""
from __future__ import annotations

import argparse
from pathlib import Path

from gpuscope.cli.options import depths
from gpuscope.errors import SplitConfigError
from gpuscope.runs.sweep import sweep
from gpuscope.session.config import SplitConfig
from gpuscope.session.workloads import DEFAULT_DEPTHS, DEFAULT_STEPS
from gpuscope.units import terminal_width, text_table


def _summary(trace) -> str:
    steps = trace.tables["steps"]
    decode = steps[steps["phase"] == "decode"]
    table = decode.groupby(["config", "depth"], sort=False)["wall_ns"].median().reset_index()
    table = table.assign(tokens_per_s=1e9 / table["wall_ns"]).rename(columns={"wall_ns": "median_step_ns"})
    return "\n".join(text_table(table, width=terminal_width()))


def _run(args) -> int:
    configs = [SplitConfig.parse(text) for text in args.config] or [SplitConfig()]
    if args.n_ctx is not None:
        configs = [config.replace(n_ctx=args.n_ctx) for config in configs]
    model = None if args.model in (None, "default") else Path(args.model)
    if model is not None and not model.is_file():
        raise SplitConfigError(f"model file not found: {model}")
    trace = sweep(configs, model, engine=args.engine, depths=args.depths, n_steps=args.steps, isolate=args.isolate,
                  progress=not args.no_progress, out=args.out)
    print(_summary(trace))
    broken = trace.meta.get("crashed") or trace.meta.get("failed")
    if broken:
        print("gpuscope sweep: an engine crashed: the trace ends each crashed configuration at its crash")
    print(trace.path)
    return 1 if broken else 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep", help="decode at several context depths under one or more split configurations",
        description="Fill the context to each depth, decode STEPS single tokens, record every step and the engine's "
                    "events; several configurations give one trace with a `config` column. Example: gpuscope sweep "
                    "--config '' --config 'devices=rpc:0,rpc:1 split_mode=layer' --depths 0,256,512 --out s.trace",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", "-o", required=True, help="trace folder to write")
    parser.add_argument("--model", "-m", default="default",
                        help="GGUF model path, or 'default' (gpuscope model default); synthetic shapes: "
                             "--model $(gpuscope model synth --shape 8b | tail -n1)")
    parser.add_argument("--engine", default=None, help="engine build folder or name (default: the default build)")
    parser.add_argument("--config", "-c", action="append", default=[], metavar="'KEY=VALUE ...'",
                        help="a split configuration, repeatable: space-separated key=value, lists comma-separated, "
                             "e.g. 'devices=rpc:0,rpc:1 split_mode=layer n_gpu_layers=99 flash_attn=on'; "
                             "keys: " + ", ".join(SplitConfig().to_dict()) + " (none given: the default)")
    parser.add_argument("--depths", type=depths, default=list(DEFAULT_DEPTHS),
                        help=f"context depths, comma-separated (default {','.join(map(str, DEFAULT_DEPTHS))})")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"decode steps per depth (default {DEFAULT_STEPS})")
    parser.add_argument("--n-ctx", type=int, default=None, help="context size for every configuration")
    parser.add_argument("--isolate", action="store_true",
                        help="run each configuration in a worker process (an engine crash ends only that part)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)
