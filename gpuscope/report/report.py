"""HTML reports: one trace (configuration, environment, health, findings, plots), or a comparison of two.

    from gpuscope.report import write_report
    write_report("run.trace", "report.html")            # or an Analysis / a Trace

Everything is in the one file: plotly.js is inlined, nothing is fetched, and every name that came from the engine
or the trace's metadata is escaped.
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pandas as pd

from gpuscope.analysis.devices import as_configured
from gpuscope.analysis.facade import Analysis
from gpuscope.doctor.rules import diagnose, headline
from gpuscope.export.perfetto import SUFFIX
from gpuscope.plots import by_config, comparison_figures, step_time_figure, timeline_figure
from gpuscope.report.page import esc, figure_div, page, pairs, table
from gpuscope.report.timeline import perfetto_block, timeline_section
from gpuscope.trace.model import Trace
from gpuscope.units import duration
from gpuscope.version import __version__

_FIGURE_TITLES = {
    "step_time_vs_context": "Step time against context", "step_breakdown": "Where each step's time went",
    "memory_over_time": "Memory per device", "allocator_timeline": "Allocator events",
    "fa_plans": "FlashAttention plans", "copy_matrix": "Cross-device copies", "cpu_stacks": "Native CPU stacks",
}


def as_analysis(trace: Analysis | Trace | str | os.PathLike, **analysis_options) -> Analysis:
    return trace if isinstance(trace, Analysis) else Analysis(trace, **analysis_options)


# -- sections of a trace report ---------------------------------------------------------------------------------------

def _summary(a: Analysis, findings: list) -> str:
    steps = a.complete_steps
    counts = {severity: sum(f.severity == severity for f in findings) for severity in ("critical", "warning", "info")}
    items = [("trace", a.trace.path or "in memory"), ("made by", a.trace.meta.get("source", "?")),
             ("steps", f"{len(a.steps)} ({len(steps)} complete)")]
    if len(steps):
        items.append(("step time", f"median {duration(steps['wall_ns'].median())} "
                                   f"(p10 {duration(steps['wall_ns'].quantile(0.1))}, "
                                   f"p90 {duration(steps['wall_ns'].quantile(0.9))})"))
        items.append(("context", f"{int(steps['context'].min())} .. {int(steps['context'].max())} cells"))
        items.append(("configurations", ", ".join(map(str, pd.unique(steps["config"])))))
    items.append(("findings", ", ".join(f"{n} {severity}" for severity, n in counts.items())))
    return pairs(items)


def _verdict(a: Analysis, findings: list) -> str:
    """The doctor's one sentence, then the configurations side by side when there are several."""
    lead = f"<p class='verdict'><b>{esc(headline(a, findings))}</b></p>"
    if len(a.config_ranking):
        lead += "<h3>Configurations ranked by median decode time per token</h3>" + table(a.config_ranking)
    if len(a.configs) > 1 and len(a.config_table):
        lead += "<h3>Configurations side by side (decode, fastest first at each depth)</h3>" + table(a.config_table)
    return lead


def _findings(findings: list, t0_ns: int) -> str:
    if not findings:
        return "<p>No findings: none of the doctor's rules saw a problem in this trace.</p>"
    return "".join(f.to_html(t0_ns=t0_ns) for f in findings)


def _configuration(a: Analysis) -> str:
    meta = a.trace.meta
    parts = []
    configs = meta.get("configs") or []
    if configs:
        parts.append("<h3>Split configurations</h3>" + table(pd.DataFrame(configs)))
    if meta.get("command"):
        parts.append("<h3>Command</h3>" + pairs([("command", " ".join(map(str, meta["command"]))),
                                                  ("exit", (meta.get("exit") or {}).get("how"))]))
    model = meta.get("model") or {}
    if model:
        parts.append("<h3>Model</h3>" + pairs(model.items()))
    elif meta.get("model_bytes"):
        recorded = meta["model_bytes"]
        parts.append("<h3>Model</h3>" + pairs([(k, recorded[k]) for k in ("path", "architecture", "n_layer",
                                                                           "weight_bytes") if k in recorded]))
    workload = meta.get("workload")
    if workload:
        parts.append("<h3>Workload</h3>" + pairs(workload.items()))
    return "".join(parts) or "<p class='muted'>The trace records no configuration.</p>"


def _environment(a: Analysis) -> str:
    meta = a.trace.meta
    engine = meta.get("engine") or {}
    parts = ["<h3>Engine build</h3>"]
    if engine.get("name"):
        source = engine.get("source") or {}
        parts.append(pairs([("name", engine.get("name")), ("backend", engine.get("backend")),
                            ("hooks", engine.get("hooks")), ("hook series sha256", engine.get("hook_series_sha256")),
                            ("source", source.get("id")), ("upstream commit", source.get("upstream")),
                            ("built", engine.get("built_at")), ("folder", engine.get("root")),
                            ("CMake options", " ".join(engine.get("options") or []))]))
        patches = pd.DataFrame(engine.get("patches") or [])
        parts.append("<h3>Patches on top of the hook series</h3>" +
                     (table(patches[[c for c in ("name", "sha256") if c in patches.columns]]) if len(patches)
                      else "<p class='muted'>none</p>"))
    else:
        parts.append(pairs(engine.items()) if engine else "<p class='muted'>(not recorded)</p>")
    parts.append("<h3>Devices</h3>")
    devices = a.devices
    if len(devices):
        configured = a.device_names.set_index("name")["shown"]  # RPC2 is the configuration's rpc:0
        parts.append(table(devices.assign(as_configured=devices["device"].map(configured)) if len(configured)
                           else devices))
    else:
        parts.append("<p class='muted'>the trace has no device_info events</p>")
    bandwidth = a.bandwidth
    parts.append("<h3>Memory bandwidth used for the floor</h3>" + table(bandwidth))
    machine = meta.get("machine")
    parts.append("<h3>Machine and driver</h3>" + (pairs(machine.items()) if machine else
                                                   "<p class='muted'>not recorded in the trace (CPU runs have no "
                                                   "driver)</p>"))
    return "".join(parts)


def _tables(a: Analysis) -> str:
    parts = [("Step time against context: fits per configuration and batch size", a.fits),
             ("Changes in step time along the context, and what happened there", a.breakpoints),
             ("Where the step time went (all complete steps)", a.budget_summary),
             ("Synchronizations per step", a.sync_summary),
             ("Cross-device copies per step, by device pair", a.copy_pairs),
             ("Allocator re-plans", a.allocator_churn),
             ("Memory peaks per location", a.memory_peaks.drop(columns=["at_ns"], errors="ignore"))]
    return "".join(f"<h3>{esc(title)}</h3>{table(as_configured(frame, a.device_names))}" for title, frame in parts)


def _health(a: Analysis) -> str:
    h = a.health
    keys = ("state", "written", "read", "lost", "strings_dropped", "writer_dropped", "crashed", "crash_signal", "exit",
            "steps_in_flight", "failed_steps")
    return pairs([(key, h.get(key)) for key in keys])


def _plots(a: Analysis) -> str:
    """Step time against context of every configuration, then each configuration's figures under its name."""
    parts = [f"<h3>{esc(_FIGURE_TITLES['step_time_vs_context'])}</h3>{figure_div(step_time_figure(a))}"]
    for config, figures in by_config(a):
        if config is not None:
            parts.append(f"<h3 class='config'>Configuration {esc(config)}</h3>")
        parts += [f"<h3>{esc(_FIGURE_TITLES.get(key, key))}</h3>{figure_div(fig)}" for key, fig in figures.items()]
    return "".join(parts)


def report_html(analysis: Analysis, *, title: str | None = None, findings: list | None = None,
                perfetto_beside: Path | None = None) -> str:
    """The report of one trace as an HTML string; `findings`: the doctor's, verified or not (default: diagnosed
    here); `perfetto_beside`: where to write a Perfetto export too large to embed (None: it is not written)."""
    a = analysis
    findings = diagnose(a) if findings is None else findings
    name = Path(str(a.trace.path)).name if a.trace.path else "trace"
    timeline = timeline_section(timeline_figure(a), perfetto_block(a, perfetto_beside))
    plots = _plots(a)
    created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = [
        ("verdict", "Verdict", _verdict(a, findings)),
        ("summary", "Summary", _summary(a, findings)),
        ("findings", "Findings", _findings(findings, a.t0_ns)),
        ("timeline", "Timeline", timeline),
        ("plots", "Plots", plots),
        ("tables", "Tables", _tables(a)),
        ("configuration", "Configuration", _configuration(a)),
        ("environment", "Environment", _environment(a)),
        ("health", "Trace health", _health(a)),
    ]
    return page(title or f"gpuscope report: {name}", f"gpuscope {__version__}, {created}", sections)


def write_report(trace: Analysis | Trace | str | os.PathLike, out: str | os.PathLike, *, title: str | None = None,
                 findings: list | None = None, **analysis_options) -> Path:
    """Write the report of a trace (a path, a Trace or an Analysis) to `out`, with its Perfetto export inside or,
    too large to embed, beside it (`<out stem>.pftrace`); returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report_html(as_analysis(trace, **analysis_options), title=title, findings=findings,
                               perfetto_beside=out.with_name(out.stem + SUFFIX)), encoding="utf-8")
    return out


# -- comparison ------------------------------------------------------------------------------------------------------

def compare_html(comparison, *, title: str | None = None) -> str:
    """The report of a gpuscope.compare Comparison: which traces, what differs between their recordings, the
    verdicts as speed-ups, the findings that appeared or disappeared (linked to their cards), the plots on shared
    axes, and every table."""
    c = comparison
    name_a, name_b = c.names
    figures = comparison_figures(c)
    plots = "".join(figure_div(fig) for fig in figures.values())
    sections = [("traces", "Traces", c.traces_html()), ("verdict", "Verdict", c.verdict_html()),
                ("findings", "Findings", c.findings_html()),
                ("plots", "Plots", plots)]
    sections += [(f"table{i}", heading, table(frame)) for i, (heading, frame) in enumerate(c.sections())
                 if heading != "Findings"]
    created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return page(title or f"gpuscope compare: {name_a} against {name_b}", f"gpuscope {__version__}, {created}",
                sections)


def write_compare_report(comparison, out: str | os.PathLike, *, title: str | None = None) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(compare_html(comparison, title=title), encoding="utf-8")
    return out
