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
    if len(steps) and len(analysis.configs) > 1:
        lines.append("step time: per configuration above; context "
                     f"{int(steps['context'].min())}..{int(steps['context'].max())}")
    elif len(steps):
        lines.append(f"step time: median {steps['wall_ns'].median() / 1e6:.3g} ms, "
                     f"context {int(steps['context'].min())}..{int(steps['context'].max())}")
        top = analysis.budget_summary.head(5)
        lines.append("budget: " + ", ".join(f"{r.category} {r.share:.0%}" for r in top.itertuples()))
    if analysis.model is None:
        lines.append("bandwidth floor: not computed (the trace records no model byte profile: pass --model)")
    elif not analysis.bandwidth["bytes_per_s"].notna().any():
        lines.append("bandwidth floor: not computed (no known bandwidth for these devices: pass --bandwidth "
                     "DEVICE=GBPS or --measure-bandwidth)")
    return lines


def config_lines(analysis) -> list[str]:
    """The configurations side by side, fastest first at each depth (only for a trace of several)."""
    table = analysis.config_table
    if len(analysis.configs) < 2 or not len(table):
        return []
    width = max(len(str(c)) for c in table["config"])
    lines = [f"{'depth':>6}  {'configuration':<{width}}  {'ms/token':>9}  {'tokens/s':>9}  {'vs fastest':>10}  "
             f"{'ms/1k ctx':>9}  {'of floor':>8}"]
    for row in table.itertuples():
        growth = f"{row.growth_ms_per_1k:9.3g}" if row.growth_ms_per_1k == row.growth_ms_per_1k else f"{'-':>9}"
        floor = f"{row.floor_share:8.0%}" if row.floor_share == row.floor_share else f"{'-':>8}"
        versus = "fastest" if row.rank == 1 else f"{row.slowdown:.3g}x"
        lines.append(f"{row.depth:>6}  {row.config:<{width}}  {row.ms_per_token:9.3g}  {row.tokens_per_s:9.3g}  "
                     f"{versus:>10}  {growth}  {floor}")
    return lines


def _run(args) -> int:
    from gpuscope.doctor.rules import headline

    analysis = analysis_from_args(args.trace, args)
    findings = analysis.findings
    if args.json:
        print(findings_json(findings))
        return 0
    print(headline(analysis, findings))
    print()
    table = config_lines(analysis)
    if table:
        print("\n".join(table))
        print()
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
