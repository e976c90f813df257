"""`gpuscope doctor TRACE [--json]`: what is wrong in a trace, the evidence, and what to try."""
from __future__ import annotations

from gpuscope.cli.options import add_analysis_options, analysis_from_args
from gpuscope.doctor.findings import findings_json
from gpuscope.doctor.rules import diagnose, headline
from gpuscope.doctor.summary import config_lines, summary_lines


def _run(args) -> int:
    analysis = analysis_from_args(args.trace, args)
    findings = diagnose(analysis)
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


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor", help="diagnose a trace: findings with evidence and what to try",
        description="Runs the doctor's rules over a trace and prints findings, most severe first.")
    parser.add_argument("trace", help="trace folder (from gpuscope record, a session or a sweep)")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON (stable rule ids)")
    add_analysis_options(parser)
    parser.set_defaults(func=_run)
