"""`gpuscope compare A B` and `gpuscope ab --a BUILD --b BUILD`."""
from __future__ import annotations

import json
from pathlib import Path

from gpuscope.analysis.facade import Analysis
from gpuscope.cli.options import add_analysis_options, add_text_options, analysis_options, depths, output_path
from gpuscope.compare.compare import compare
from gpuscope.errors import GpuscopeError
from gpuscope.report.report import write_compare_report
from gpuscope.runs.ab import run_ab
from gpuscope.session.config import SplitConfig


def _compare(args) -> int:
    if args.output:
        output_path(args.output)
    options = analysis_options(args)
    comparison = compare(Analysis(args.a, **options), Analysis(args.b, **options))
    if args.output:
        write_compare_report(comparison, args.output)
    if args.json:
        print(json.dumps(comparison.to_dict(), indent=2))
    else:
        print(comparison.to_text(args.width, args.rows))
        if args.output:
            print(f"\nwritten: {args.output}")
    return 0


def _ab(args) -> int:
    if args.rounds < 1:
        raise GpuscopeError("--rounds must be at least 1")
    model = None if args.model in (None, "default") else Path(args.model)
    if model is not None and not model.is_file():
        raise GpuscopeError(f"model file not found: {model}")
    config = SplitConfig.parse(args.config)
    options = analysis_options(args)
    options["model"] = None
    result = run_ab(args.a, args.b, args.out, model=model, config=config, depths=args.depths, n_steps=args.steps,
                    rounds=args.rounds, analysis_options=options)
    write_compare_report(result.comparison, Path(args.out) / "compare.html")
    print(result.comparison.to_text())
    print(f"\nwritten: {Path(args.out) / 'a.trace'}, {Path(args.out) / 'b.trace'}, "
          f"{Path(args.out) / 'compare.json'}, {Path(args.out) / 'compare.html'}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="compare two traces: step time with confidence intervals, events, plans, memory, findings",
        description="Step time per context bucket (B - A with a bootstrap interval; a verdict only where it "
                    "excludes zero), event counts, FA plans added/removed, allocations, syncs, findings.")
    parser.add_argument("a", help="the 'before' trace")
    parser.add_argument("b", help="the 'after' trace")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    parser.add_argument("-o", "--output", help="also write an HTML report to this file")
    add_text_options(parser)
    add_analysis_options(parser)
    parser.set_defaults(func=_compare)

    ab = subparsers.add_parser(
        "ab", help="run one workload on two engine builds, interleaved, and compare",
        description="Runs the context-sweep workload on build A and build B in worker processes, alternating "
                    "(A B, B A, ...) for --rounds rounds, writes OUT/a.trace, OUT/b.trace and the comparison. "
                    "Example: gpuscope engine build --name before; gpuscope engine build --name after --patch "
                    "fix.patch; gpuscope ab --a before --b after --out ab/")
    ab.add_argument("--a", required=True, help="engine build A (a name from `gpuscope engine list`, or a folder)")
    ab.add_argument("--b", required=True, help="engine build B")
    ab.add_argument("--out", "-o", required=True, help="folder for both traces and the comparison")
    ab.add_argument("--model", "-m", default="default", help="GGUF model path, or 'default'")
    ab.add_argument("--config", "-c", default="", metavar="'KEY=VALUE ...'",
                    help="split configuration, as for gpuscope sweep (default: the default configuration)")
    ab.add_argument("--depths", type=depths, default=[0, 256], help="context depths (default 0,256)")
    ab.add_argument("--steps", type=int, default=16, help="decode steps per depth and round (default 16)")
    ab.add_argument("--rounds", type=int, default=3, help="rounds of A and B (default 3)")
    ab.add_argument("--bandwidth", action="append", metavar="DEVICE=GBPS",
                    help="memory bandwidth of a device in GB/s, for the bandwidth floor")
    ab.add_argument("--measure-bandwidth", action="store_true",
                    help="measure this machine's host copy bandwidth for the CPU device")
    ab.set_defaults(func=_ab)
