"""`gpuscope report TRACE -o report.html [--png DIR] [--pdf FILE]`: the HTML report of a trace."""
from __future__ import annotations

from pathlib import Path

from gpuscope.cli.options import (add_analysis_options, add_verify_options, analysis_from_args, output_path,
                                  verified_findings)
from gpuscope.plots import standard_figures
from gpuscope.report.report import write_report
from gpuscope.report.static import export_pdf, export_png


def _run(args) -> int:
    output_path(args.output)
    if args.png:
        output_path(args.png, folder=True)
    if args.pdf:
        output_path(args.pdf)
    analysis = analysis_from_args(args.trace, args)
    out = write_report(analysis, args.output, title=args.title, findings=verified_findings(analysis, args))
    print(f"report: {out.resolve()}")
    if args.png:
        for path in export_png(standard_figures(analysis), args.png):
            print(f"png: {path}")
    if args.pdf:
        print(f"pdf: {export_pdf(out, args.pdf)}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="write a self-contained HTML report of a trace (findings, plots, configuration)",
        description="One HTML file with plotly.js inlined (opens offline, no CDN): summary, the doctor's findings, "
                    "step time against context, per-step breakdown, memory, allocator events, FA plans, copies, "
                    "configuration, engine build and devices. --png / --pdf need kaleido and Chrome/Chromium.")
    parser.add_argument("trace", help="trace folder (from gpuscope record, a session or a sweep)")
    parser.add_argument("-o", "--output", default="report.html", help="HTML file to write (default report.html)")
    parser.add_argument("--title", help="the report's title (default: from the trace's name)")
    parser.add_argument("--png", metavar="DIR", type=Path, help="also write each figure as DIR/<figure>.png")
    parser.add_argument("--pdf", metavar="FILE", type=Path, help="also print the report to a PDF file")
    add_analysis_options(parser)
    add_verify_options(parser)
    parser.set_defaults(func=_run)
