"""`gpuscope doctor TRACE [--json] [--verify]`: what is wrong in a trace, the evidence, what to try, and (with
--verify) what the first remedy saves when it is run."""
from __future__ import annotations

from gpuscope.cli.options import add_analysis_options, add_text_options, add_verify_options, analysis_from_args, \
    verified_findings
from gpuscope.doctor.findings import TEXT_ROWS, findings_json
from gpuscope.doctor.rules import headline
from gpuscope.doctor.summary import config_lines, summary_lines
from gpuscope.units import terminal_width, wrap


def _run(args) -> int:
    analysis = analysis_from_args(args.trace, args)
    findings = verified_findings(analysis, args)
    if args.json:
        print(findings_json(findings))
        return 0
    width = args.width or terminal_width()
    print("\n".join(wrap(headline(analysis, findings), width)))
    print()
    table = config_lines(analysis, width, args.rows)
    if table:
        print("\n".join(table))
        print()
    print("\n".join(summary_lines(analysis, width)))
    print()
    if not findings:
        print("no findings")
    for finding in findings:
        print(finding.to_text(width, args.rows or TEXT_ROWS))
        print()
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor", help="diagnose a trace: findings with evidence and what to try",
        description="Runs the doctor's rules over a trace and prints findings, most severe first.")
    parser.add_argument("trace", help="trace folder (from gpuscope record, a session or a sweep)")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON (stable rule ids)")
    add_text_options(parser)
    add_analysis_options(parser)
    add_verify_options(parser)
    parser.set_defaults(func=_run)
