"""The report's timeline section: the timeline figure, what it merged, the Perfetto export to download, and the
links from finding cards to the span of the trace each refers to (Finding.time_range_ns: a click zooms the
timeline there and outlines it)."""
from __future__ import annotations

from pathlib import Path

from gpuscope.errors import CollectorUnavailableError
from gpuscope.export.perfetto import EMBED_LIMIT, SUFFIX, download_html, perfetto_bytes
from gpuscope.report.page import esc, figure_div
from gpuscope.units import size

TIMELINE_ID = "gpuscope-timeline"

# a click on a finding card (not on its evidence or rows) zooms every x axis of the timeline to the finding's span
# and outlines it; plotly.js is inlined in the page, so nothing is fetched
_SCRIPT = """<script type='text/javascript'>(function () {
  var plot = document.getElementById('%(id)s');
  if (!plot) { return; }
  document.querySelectorAll('.finding[data-from]').forEach(function (card) {
    card.addEventListener('click', function (event) {
      if (event.target.closest('details, a')) { return; }
      var from = parseFloat(card.dataset.from), to = parseFloat(card.dataset.to);
      var pad = Math.max((to - from) * 0.1, 0.0005), range = [from - pad, to + pad];
      var shapes = (plot.layout.shapes || []).filter(function (s) { return s.name !== 'finding'; });
      shapes.push({type: 'rect', name: 'finding', xref: 'x', yref: 'paper', x0: from, x1: to, y0: 0, y1: 1,
                   line: {color: '#cf222e', width: 2}, fillcolor: 'rgba(207,34,46,0.08)', layer: 'above'});
      var update = {shapes: shapes};
      Object.keys(plot.layout).filter(function (k) { return /^xaxis\\d*$/.test(k); })
        .forEach(function (k) { update[k + '.range'] = range; update[k + '.autorange'] = false; });
      Plotly.relayout(plot, update);
      plot.scrollIntoView({behavior: 'smooth', block: 'center'});
    });
  });
})();</script>"""


def perfetto_block(analysis, beside: Path | None) -> str:
    """The Perfetto export of the trace to download: inside the page up to EMBED_LIMIT, else written to `beside`
    (a file next to the report) and linked; where neither can be, what to run instead."""
    try:
        data, _ = perfetto_bytes(analysis.trace)
    except CollectorUnavailableError as missing:
        return f"<p class='muted'>No Perfetto export in this report: {esc(missing)}.</p>"
    name = (Path(str(analysis.trace.path)).stem if analysis.trace.path else "trace") + SUFFIX
    if len(data) <= EMBED_LIMIT:
        return download_html(name, data=data, size_text=size(len(data)))
    if beside is None:
        return (f"<p class='muted'>The Perfetto export ({esc(size(len(data)))}) is too large to embed: "
                f"<code>gpuscope export TRACE --perfetto {esc(name)}</code> writes it.</p>")
    beside.write_bytes(data)
    return download_html(beside.name, href=beside.name, size_text=f"{size(len(data))}, beside this report")


def timeline_section(fig, perfetto: str) -> str:
    merged = fig.layout.meta.get("merged") if fig.layout.meta else None
    note = ("<p class='muted'>Lanes with more than {limit} items are merged where their items crowd: {what}. "
            "Perfetto shows every event.</p>").format(
        limit=fig.layout.meta["max_spans"],
        what="; ".join(f"{esc(lane)} {n} into {spans}" for lane, (n, spans) in merged.items())) if merged else ""
    return (f"{figure_div(fig, div_id=TIMELINE_ID)}{note}{perfetto}"
            "<p class='muted'>Every time axis of this report counts seconds from the trace's first event. Click a "
            "finding card to see its span here; double-click the timeline to see all of it again.</p>"
            + _SCRIPT % {"id": TIMELINE_ID})
