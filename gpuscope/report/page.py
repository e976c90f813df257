"""One self-contained HTML page: plotly.js inlined once (no CDN, works offline), figures as divs, and every piece
of text from a trace escaped (a tensor name is data, never markup)."""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from gpuscope.markup import PARTS_STYLE, esc, pairs, table  # noqa: F401 (the report's pieces, from one home)

STYLE = PARTS_STYLE + """
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
nav a { margin-right: 14px; font-size: 13px; color: #0969da; text-decoration: none; }
"""


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
