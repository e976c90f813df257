"""What a notebook shows of gpuscope's objects: a Finding, an Analysis, a Trace, a Comparison and a summary render
themselves as the report's cards and tables (one renderer, gpuscope.markup), every engine name escaped; the summary
in text and HTML; a finished sweep's memory per configuration. All on recorded traces."""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pytest

from gpuscope.analysis import Analysis
from gpuscope.analysis.memory import placement
from gpuscope.analysis.steps import main_process
from gpuscope.analysis.verdict import decode_steps
from gpuscope.compare import compare
from gpuscope.doctor.rules import diagnose
from gpuscope.live.events import memory_per_config
from gpuscope.report import compare_html, report_html

CPU = Path(__file__).resolve().parent.parent / "datasets" / "cpu"
MARKUP_NAME = "l_out<img/src=x/onerror=alert(1)>-2"  # the test patch's layer output name (RPC0 -> RPC1)


@pytest.fixture(scope="module")
def markup() -> Analysis:
    return Analysis(CPU / "cpu-markup-tensor-names.trace")


@pytest.fixture(scope="module")
def sweep() -> Analysis:
    return Analysis(CPU / "cpu-sweep-split-configs.trace")


def test_a_finding_shows_the_report_s_card(sweep) -> None:
    findings = diagnose(sweep)
    page = report_html(sweep, findings=findings)
    for finding in findings:
        assert finding.to_html(t0_ns=sweep.t0_ns) in page  # the report draws the same card, linked to its timeline
        card = finding.to_html()
        shown = finding._repr_html_()
        assert card in shown and "<style>" in shown and f"<code>{finding.id}</code>" in shown
        assert "Likely cause:" in shown and "evidence" in shown


def test_engine_names_are_text_in_every_object(markup) -> None:
    other = Analysis(CPU / "cpu-kv-on-host-copies.trace")
    comparison = compare(markup, other)
    shown = {"analysis": markup._repr_html_(), "trace": markup.trace._repr_html_(),
             "summary": markup.summary(diagnose(markup))._repr_html_(), "comparison": comparison._repr_html_(),
             **{f.id: f._repr_html_() for f in diagnose(markup)}}
    for name, text in shown.items():
        assert "<img" not in text and "onerror=alert(1)>" not in text, name
    # the copy table names the tensor, as text
    assert html.escape(MARKUP_NAME) in shown["analysis"]
    # the comparison's pieces are the report's: its page holds them as they are
    page = compare_html(comparison)
    assert comparison.traces_html() in page and comparison.findings_html() in page


def test_the_trace_says_what_it_holds(sweep) -> None:
    shown = sweep.trace._repr_html_()
    assert "gpuscope trace cpu-sweep-split-configs.trace" in shown
    for config in sweep.configs:
        assert html.escape(config) in shown
    assert f"<td>decode_begin</td>\n      <td>{len(sweep.trace.tables['decode_begin'])}</td>" in shown


def test_summary_per_configuration_in_text_and_html(sweep) -> None:
    findings = diagnose(sweep)
    summary = sweep.summary(findings)
    table = summary.table
    assert list(table["config"]) == sweep.configs
    decode = decode_steps(sweep.steps)
    for row in table.itertuples():
        wall = decode.loc[decode["config"] == row.config, "wall_ns"]
        assert row.steps == len(wall) and row.median_step_ns == wall.median()
        assert row.tokens_per_s == pytest.approx(1e9 / wall.median())
        assert row.p10_ns <= row.median_step_ns <= row.p90_ns
    text = summary.to_text(width=80)
    assert all(len(line) <= 80 for line in text.splitlines()) and str(summary) == summary.to_text()
    counts = {s: sum(f.severity == s for f in findings) for s in ("critical", "warning", "info")}
    assert f"findings: {counts['critical']} critical, {counts['warning']} warning, {counts['info']} info" in text
    assert findings[0].id in text and findings[0].id in summary._repr_html_()
    assert "ms" in summary._repr_html_() and "e+" not in summary._repr_html_()  # human units
    assert "not given" in sweep.summary().to_text()  # the analysis never runs the doctor itself


def test_the_analysis_shows_its_configurations_side_by_side(sweep) -> None:
    shown = sweep._repr_html_()
    assert "Configurations side by side" in shown and "Where the step time went" in shown
    assert sweep.summary().to_html() in shown


def test_memory_per_configuration_outlives_the_sessions(sweep) -> None:
    """Each configuration's part of a sweep: what it held at its last step is every buffer of its run (all freed
    when its session closed), and its peak is at least that."""
    # the engine's own process, as the dashboard reads it (the RPC servers' rings are their own)
    per_config = memory_per_config(main_process(sweep.trace.tables["buffer"]), sweep.steps)
    assert set(per_config["config"]) == set(sweep.configs)
    for config in sweep.configs:
        mine = per_config[per_config["config"] == config].set_index("location")
        run = placement(sweep.buffers, sweep.run_of(config)).groupby("location")["bytes"].sum()
        assert set(mine.index) == set(run[run > 0].index)
        assert np.allclose(mine["held_bytes"].reindex(run.index).fillna(0), run)
        assert (mine["peak_bytes"] >= mine["held_bytes"]).all()
