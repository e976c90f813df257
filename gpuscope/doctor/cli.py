"""`gpuscope doctor TRACE [--json]`: what is wrong in a trace, the evidence, and what to try."""
from __future__ import annotations


from gpuscope.doctor.findings import findings_json
from gpuscope.errors import GpuscopeError


def parse_bandwidth(items: list[str] | None) -> dict[str, float]:
    """DEVICE=GBPS pairs (`CPU=12.5`, `CUDA0=3050`)."""
    given = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            given[name] = float(value)
        except ValueError:
            raise GpuscopeError(f"--bandwidth {item!r}: expected DEVICE=GBPS, for example CUDA0=3050") from None
        if not sep or not name or given[name] <= 0:
            raise GpuscopeError(f"--bandwidth {item!r}: expected DEVICE=GBPS with a positive number")
    return given


def analysis_from_args(path, args):
    from gpuscope.analysis.bandwidth import measure_copy_bandwidth
    from gpuscope.analysis.facade import Analysis

    bandwidth = parse_bandwidth(args.bandwidth)
    if args.measure_bandwidth:
        bandwidth.setdefault("CPU", measure_copy_bandwidth())
    return Analysis(path, model=args.model, bandwidth=bandwidth)


def summary_lines(analysis) -> list[str]:
    steps = analysis.complete_steps
    lines = [f"trace: {analysis.trace.path}", f"steps: {len(analysis.steps)} ({len(steps)} complete)"]
    if len(steps):
        lines.append(f"step time: median {steps['wall_ns'].median() / 1e6:.3g} ms, "
                     f"context {int(steps['context'].min())}..{int(steps['context'].max())}")
        top = analysis.budget_summary.head(5)
        lines.append("budget: " + ", ".join(f"{r.category} {r.share:.0%}" for r in top.itertuples()))
    if analysis.model is None:
        lines.append("bandwidth floor: not computed (no model file: pass --model)")
    elif not analysis.bandwidth["bytes_per_s"].notna().any():
        lines.append("bandwidth floor: not computed (no known bandwidth for these devices: pass --bandwidth "
                     "DEVICE=GBPS or --measure-bandwidth)")
    return lines


def _run(args) -> int:
    analysis = analysis_from_args(args.trace, args)
    findings = analysis.findings
    if args.json:
        print(findings_json(findings))
        return 0
    print("\n".join(summary_lines(analysis)))
    print()
    if not findings:
        print("no findings")
    for finding in findings:
        print(finding.to_text())
        print()
    return 0


def add_analysis_options(parser) -> None:
    parser.add_argument("--model", help="the GGUF file the run used, when the trace does not name it")
    parser.add_argument("--bandwidth", action="append", metavar="DEVICE=GBPS",
                        help="memory bandwidth of a device in GB/s (repeatable), for the bandwidth floor")
    parser.add_argument("--measure-bandwidth", action="store_true",
                        help="measure this machine's host copy bandwidth for the CPU device (only meaningful "
                             "for traces recorded on this machine)")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor", help="diagnose a trace: findings with evidence and what to try",
        description="Runs the doctor's rules over a trace and prints findings, most severe first.")
    parser.add_argument("trace", help="trace folder (from gpuscope record, a session or a sweep)")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON (stable rule ids)")
    add_analysis_options(parser)
    parser.set_defaults(func=_run)
