"""One self-contained HTML page: plotly.js inlined once (no CDN, works offline), figures as divs, and every piece
of text from a trace escaped (a tensor name is data, never markup)."""
from __future__ import annotations

import html
from typing import Iterable

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from gpuscope.units import as_table, human, label, value

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1f2328; background: #fafbfc; }
header { background: #24292f; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px 0; font-size: 22px; }
header p { margin: 0; color: #c9d1d9; font-size: 13px; }
main { padding: 8px 32px 40px 32px; max-width: 1280px; }
section { background: #fff; border: 1px solid #d0d7de; border-radius: 6px; padding: 12px 20px; margin: 18px 0; }
h2 { font-size: 18px; margin: 6px 0 12px 0; }
h3 { font-size: 15px; margin: 14px 0 6px 0; }
h3.config { font-size: 17px; border-top: 2px solid #d0d7de; padding-top: 12px; margin-top: 24px; }
table { border-collapse: collapse; margin: 6px 0 12px 0; font-size: 13px; }
td, th { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
.finding { border-left: 5px solid #888; padding: 6px 14px; margin: 12px 0; background: #fcfcfc; }
.finding.critical { border-color: #cf222e; } .finding.warning { border-color: #bf8700; }
.finding.info { border-color: #0969da; }
.finding[data-from] { cursor: pointer; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; color: #fff;
         margin-right: 6px; }
.wide { overflow-x: auto; }
.badge.critical { background: #cf222e; } .badge.warning { background: #bf8700; } .badge.info { background: #0969da; }
.muted { color: #57606a; font-size: 13px; }
.verdict { font-weight: 600; }
details summary { cursor: pointer; color: #0969da; font-size: 13px; }
nav a { margin-right: 14px; font-size: 13px; color: #0969da; text-decoration: none; }
"""


def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def table(frame: pd.DataFrame, *, max_rows: int = 200, unit_name: str = "") -> str:
    """A DataFrame as an HTML table in human units (gpuscope.units.human), every cell escaped."""
    if frame is None or not len(frame):
        return "<p class='muted'>(none)</p>"
    shown = human(frame.head(max_rows), unit_name=unit_name)
    more = f"<p class='muted'>{len(frame) - max_rows} more rows not shown</p>" if len(frame) > max_rows else ""
    return "<div class='wide'>" + shown.to_html(index=False, escape=True, border=0) + "</div>" + more


def pairs(items: Iterable[tuple[str, object]]) -> str:
    """A two-column key / value table: each value in the unit its key names, a value that is a table (a list of
    records, a dict of dicts) as a small table of its own; everything escaped."""
    rows = []
    for key, item in items:
        nested = as_table(item)
        shown = table(nested, unit_name=str(key)) if nested is not None else f"<span>{esc(value(item, key))}</span>"
        rows.append(f"<tr><th>{esc(label(key))}</th><td>{shown}</td></tr>")
    return "<table>" + "".join(rows) + "</table>" if rows else "<p class='muted'>(not recorded)</p>"


def figure_div(fig: go.Figure, div_id: str | None = None) -> str:
    # plotly's JSON escapes '<', '>' and '/': no string in a figure can close the script element
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> str:
    """sections: (anchor, heading, body HTML). The title and subtitle are escaped here."""
    nav = "".join(f"<a href='#{esc(anchor)}'>{esc(heading)}</a>" for anchor, heading, _ in sections)
    body = "".join(f"<section id='{esc(anchor)}'><h2>{esc(heading)}</h2>{content}</section>"
                   for anchor, heading, content in sections)
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='generator' content='gpuscope'><title>{esc(title)}</title>"
            f"<style>{STYLE}</style><script type='text/javascript'>{get_plotlyjs()}</script></head>"
            f"<body><header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>"
            f"<main><nav>{nav}</nav>{body}</main></body></html>\n")
