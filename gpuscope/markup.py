"""The HTML pieces every renderer shares: escaping, tables in human units, key / value tables, and the style of
finding cards, for the report pages (gpuscope.report) and for the objects a notebook shows (`_repr_html_` of a
Trace, an Analysis, a Finding, a Comparison). Low in the layers so that the trace and the analysis can use it.

Every piece escapes what it is given: a tensor or device name is data, never markup."""
from __future__ import annotations

import html
from typing import Iterable

import pandas as pd

from gpuscope.units import as_table, human, label, value

# What cards and tables look like; the report page adds its own layout around it.
PARTS_STYLE = """
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
"""
# In a notebook the tables' rules stay inside the object's own element, so the notebook's own tables keep theirs.
NOTEBOOK_STYLE = PARTS_STYLE + """
.gpuscope table { border-collapse: collapse; margin: 6px 0 12px 0; font-size: 13px; }
.gpuscope td, .gpuscope th { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; vertical-align: top; }
.gpuscope th { background: #f6f8fa; }
.gpuscope h3 { font-size: 15px; margin: 12px 0 6px 0; }
"""


def esc(text) -> str:
    return html.escape("" if text is None else str(text))


def table(frame: pd.DataFrame | None, *, max_rows: int = 200, unit_name: str = "") -> str:
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


def notebook(title: str, body: str) -> str:
    """An object's HTML for a notebook cell: its title (escaped here; none where empty), then `body` (already
    escaped HTML), with the style its cards and tables need."""
    heading = f"<h3>{esc(title)}</h3>" if title else ""
    return f"<div class='gpuscope'><style>{NOTEBOOK_STYLE}</style>{heading}{body}</div>"
