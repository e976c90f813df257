"""Reports: one self-contained HTML file per trace or comparison (plotly.js inlined, works offline, engine names
escaped), and static PNG / PDF through kaleido and a browser where one exists.

    from gpuscope.report import write_report
    write_report("run.trace", "report.html")
"""
from gpuscope.report.report import compare_html, report_html, write_compare_report, write_report
from gpuscope.report.static import export_pdf, export_png, find_browser

__all__ = ["compare_html", "export_pdf", "export_png", "find_browser", "report_html", "write_compare_report",
           "write_report"]
