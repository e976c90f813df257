"""Plots and reports on real recorded traces (datasets/): every figure draws what the analysis says, every time axis
counts from the trace's first event, every name from the engine stays text, and the HTML report is one
self-contained file with the Perfetto export inside or beside it. No engine build needed (about 60 s)."""
from __future__ import annotations

import base64
import html
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gpuscope.doctor.rules import diagnose
from gpuscope.analysis import Analysis
from gpuscope.compare.compare import compare
from gpuscope.errors import StaticExportUnavailableError
from gpuscope.export import perfetto_link
from gpuscope.export.perfetto import EMBED_LIMIT, perfetto_bytes, read_packets
from gpuscope.plots import (before_after, comparison_figures, copy_matrix, event_markers, fa_plan_table,
                            memory_over_time, standard_figures, step_time_vs_context, timeline)
from gpuscope.plots.style import CATEGORY_COLORS
from gpuscope.plots.timeline import MAX_SPANS
from gpuscope.report import export_pdf, export_png, find_browser, write_compare_report, write_report
from gpuscope.units import value

DATASETS = Path(__file__).resolve().parent.parent / "datasets"
MARKUP_NAME = "l_out<img/src=x/onerror=alert(1)>-2"  # the test patch's layer output name, layer 2 (RPC0 -> RPC1)


def dataset(name: str) -> Path:
    for folder in ("cpu", "traces", "h100-fa-routes"):
        if (DATASETS / folder / f"{name}.trace").is_dir():
            return DATASETS / folder / f"{name}.trace"
    raise FileNotFoundError(name)


def strings_of(fig) -> list[str]:
    """Every string plotly will draw as text: trace names, hover texts, table cells, tick labels."""
    found = []

    def walk(value):
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(json.loads(fig.to_json()))
    return found


def test_step_time_plot_draws_every_step_fit_floor_and_event_markers() -> None:
    a = Analysis(dataset("cpu-allocator-churn"))
    steps = a.complete_steps
    markers = event_markers(a.step_events, a.syncs, steps)
    fig = step_time_vs_context(steps, a.fits, a.floor, markers)
    decode = steps[steps["n_tokens"] == 1]
    points = [t for t in fig.data if t.legendgroup == "llama-bench" and t.mode == "markers"]
    assert sum(len(t.x) for t in points) == len(decode)
    drawn = sorted(y for t in points for y in t.y)
    assert np.allclose(drawn, sorted(decode["wall_ns"] / 1e6))
    # the churn: every decode step re-reserves, with the 'realloc' syncs that costs
    by_kind = {t.name: t for t in fig.data if t.legendgroup and t.legendgroup.startswith("event ")}
    reserves = a.allocator.set_index("step").loc[decode["step"], "reserves"]
    assert len(by_kind["re-reserve"].x) == int((reserves > 0).sum())
    assert any("realloc" in h for h in by_kind["sync"].hovertext)
    fit = a.fits[a.fits["n_tokens"] == 1].iloc[0]
    line = next(t for t in fig.data if t.name == "fit: llama-bench")
    assert line.y[0] == pytest.approx((fit.intercept_ns + fit.slope_ns_per_cell * fit.context_min) / 1e6)
    assert fig.layout.xaxis.title.text.startswith("context") and "ms" in fig.layout.yaxis.title.text


def test_bandwidth_floor_is_drawn_when_the_bandwidth_is_known() -> None:
    a = Analysis(dataset("gpu-8b8l-fa-on"))  # H100, measured bandwidth in the trace
    fig = step_time_vs_context(a.complete_steps, a.fits, a.floor)
    floor = next(t for t in fig.data if t.name.startswith("bandwidth floor"))
    decode_floor = a.floor[a.floor["n_tokens"] == 1].sort_values("context")
    assert np.allclose(floor.y, decode_floor["floor_ns"] / 1e6)
    assert (np.array(floor.y) < np.median(a.complete_steps["wall_ns"]) / 1e6).all()


def test_memory_plot_holds_what_the_buffers_held_per_device() -> None:
    a = Analysis(dataset("cpu-kv-on-host-copies"))
    fig = memory_over_time(a.buffers, t0_ns=a.t0_ns)
    panels = {annotation.text for annotation in fig.layout.annotations}
    assert panels == set(a.buffers["location"])
    # the KV cache was kept on the host (-nkvo): its peak on the CPU panel is the KV buffers' size
    kv = a.buffers[(a.buffers["owner"] == "kv") & (a.buffers["location"] == "CPU")]
    kv_trace = next(t for t in fig.data if t.name == "kv" and t.xaxis in ("x", "x1"))
    assert max(kv_trace.y) == pytest.approx(kv["size"].sum() / 2**20)


def test_fa_plan_table_shades_plans_without_a_kernel() -> None:
    a = Analysis(dataset("gpu-tiny-kv-iq4nl"))
    fig = fa_plan_table(a.fa_plans)
    cells = fig.data[0].cells
    kernels = list(cells.values[4])
    assert "none" in kernels and "(1 with no kernel)" in fig.layout.title.text
    fills = cells.fill.color[0]
    assert [fill != "#ffffff" for fill in fills] == [k == "none" for k in kernels]


def test_copy_matrix_is_source_by_destination_with_the_tensors_copied() -> None:
    a = Analysis(dataset("cpu-kv-on-host-copies"))
    fig = copy_matrix(a.copy_pairs)
    heat = fig.data[0]
    for row in a.copy_pairs.itertuples():
        i, j = list(heat.y).index(row.src_device), list(heat.x).index(row.dst_device)
        assert heat.z[i][j] == pytest.approx(row.time_per_step_ns / 1e6)
    assert any("cache_k" in text for line in heat.hovertext for text in line)


def test_flame_chart_adds_up_the_sampled_stacks() -> None:
    from gpuscope.plots import cpu_flame

    a = Analysis(dataset("cpu-stacks-gemma3"))
    stacks = a.folded_stacks
    icicle = cpu_flame(stacks, min_share=0.0).data[0]
    values = dict(zip(icicle.ids, icicle.values))
    total = int(a.trace.tables["cpu_stacks"]["samples"].sum())
    assert sum(v for i, p, v in zip(icicle.ids, icicle.parents, icicle.values) if p == "") == total
    # every frame holds at least what its callees hold, and the engine's CPU kernels are in there
    assert all(values[p] >= v for p, v in zip(icicle.parents, icicle.values) if p)
    assert any("ggml_compute_forward" in label for label in icicle.labels)
    pruned = cpu_flame(stacks).data[0]  # frames under 0.5% of the samples are left out
    assert len(pruned.ids) < len(icicle.ids)


def test_before_after_draws_the_difference_and_its_interval() -> None:
    a, b = Analysis(dataset("gpu-8b8l-fa-off")), Analysis(dataset("gpu-8b8l-fa-on"))
    comparison = compare(a, b, labels=("FA off", "FA on"))
    fig = before_after(comparison.step_time, a.complete_steps, b.complete_steps, labels=comparison.labels)
    buckets = comparison.step_time[comparison.step_time["n_tokens"] == 1]
    difference = next(t for t in fig.data if t.name == "difference")
    assert np.allclose(difference.y, buckets["diff_ns"] / 1e6)
    band = next(t for t in fig.data if t.fill == "toself")
    assert np.allclose(sorted(band.y), sorted(np.concatenate([buckets["ci_low_ns"], buckets["ci_high_ns"]]) / 1e6))
    assert all(v in " ".join(difference.hovertext) for v in buckets["verdict"])


def test_engine_names_are_text_in_every_figure() -> None:
    a = Analysis(dataset("cpu-markup-tensor-names"))
    figures = standard_figures(a)
    texts = [s for fig in figures.values() for s in strings_of(fig)]
    assert any(html.escape(MARKUP_NAME, quote=False) in s for s in texts)
    assert not any("<img" in s for s in texts)


def test_report_is_self_contained_and_escapes_engine_names(tmp_path) -> None:
    out = write_report(dataset("cpu-markup-tensor-names"), tmp_path / "report.html")
    page = out.read_text()
    assert "<img" not in page and "onerror=alert(1)>" not in page
    assert html.escape(MARKUP_NAME, quote=False) in page  # the copy table shows the name, as text
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=", page)  # nothing fetched: plotly.js is inlined
    assert page.count("Plotly.newPlot(") == len(standard_figures(Analysis(dataset("cpu-markup-tensor-names"))))
    for heading in ("Summary", "Findings", "Plots", "Configuration", "Environment", "Trace health"):
        assert f">{heading}</h2>" in page
    assert "test-markup-names" in page and "markup-tensor-name.diff" in page  # the build and its patch


def test_report_lists_findings_with_their_evidence(tmp_path) -> None:
    a = Analysis(dataset("cpu-eval-callback-syncs"))
    page = write_report(a, tmp_path / "r.html").read_text()
    finding = diagnose(a)[0]
    assert finding.id == "sync.eval-callback"
    assert f"<code>{finding.id}</code>" in page and "Likely cause:" in page
    # the evidence in its units, as the text says it
    assert f"<th>syncs_per_step</th><td><span>{value(finding.evidence['syncs_per_step'], 'syncs_per_step')}</span>" \
        in page


def test_report_cli_and_its_errors(tmp_path) -> None:
    out = tmp_path / "cli.html"
    done = subprocess.run([sys.executable, "-m", "gpuscope.cli", "report", str(dataset("cpu-sweep-gemma3")), "-o",
                           str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"report: {out.resolve()}" in done.stdout and out.stat().st_size > 1_000_000
    bad = subprocess.run([sys.executable, "-m", "gpuscope.cli", "report", str(tmp_path), "-o", str(out)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "not a gpuscope trace" in bad.stderr


def test_compare_cli_writes_the_compare_report(tmp_path) -> None:
    out = tmp_path / "compare.html"
    done = subprocess.run([sys.executable, "-m", "gpuscope.cli", "compare", str(dataset("gpu-8b8l-fa-off")),
                           str(dataset("gpu-8b8l-fa-on")), "-o", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    assert "x faster" in page and page.count("Plotly.newPlot(") == 3 and ">Verdict</h2>" in page


def test_static_export_says_what_is_missing_without_a_browser(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GPUSCOPE_BROWSER", str(tmp_path / "no-such-browser"))
    figures = standard_figures(Analysis(dataset("cpu-sweep-gemma3")))
    with pytest.raises(StaticExportUnavailableError, match="apt-get install chromium"):
        export_png(figures, tmp_path)
    with pytest.raises(StaticExportUnavailableError, match="needs a Chrome or Chromium browser"):
        export_pdf(tmp_path / "r.html", tmp_path / "r.pdf")


@pytest.mark.skipif(find_browser() is None or importlib.util.find_spec("kaleido") is None,
                    reason="PNG/PDF export needs Chrome or Chromium (apt-get install chromium) and kaleido "
                           "(pip install 'gpuscope[images]')")
def test_png_and_pdf_through_the_browser(tmp_path) -> None:
    analysis = Analysis(dataset("cpu-sweep-gemma3"))
    written = export_png({"steps": standard_figures(analysis)["step_time_vs_context"]}, tmp_path)
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = write_report(analysis, tmp_path / "r.html")
    pdf = export_pdf(html, tmp_path / "r.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 20_000
    compare_page = write_compare_report(compare(analysis, analysis), tmp_path / "c.html")
    assert "No step-time difference" in compare_page.read_text()


# a number in scientific notation as Python and plotly write it (1.6e+10, 1e-05), not a hash's '5e3'
SCIENTIFIC = re.compile(r"(?<![\w.])\d+(?:\.\d+)?[eE][+-]\d+")


def visible_text(page: str) -> str:
    """What a reader sees of a page: no scripts (plotly.js and the figures' JSON), no style, no tags."""
    shown = re.sub(r"<script.*?</script>|<style.*?</style>", " ", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", shown))


def test_compare_report_names_the_traces_shares_its_axes_and_links_the_findings(tmp_path) -> None:
    a = Analysis(DATASETS / "h200-bench-doctor" / "kv-cache-on-the-host.trace")
    b = Analysis(DATASETS / "h200-bench-doctor" / "kv-cache-on-the-host-fixed.trace")
    comparison = compare(a, b)
    figures = comparison_figures(comparison)
    # A and B against one scale: the same ranges, holding every step either draws
    assert figures["a"].layout.yaxis.range == figures["b"].layout.yaxis.range
    assert figures["a"].layout.xaxis.range == figures["b"].layout.xaxis.range
    slowest = max(s.loc[s["n_tokens"] == 1, "wall_ns"].max() for s in (a.complete_steps, b.complete_steps)) / 1e6
    assert figures["a"].layout.yaxis.range[0] == 0 and figures["b"].layout.yaxis.range[1] >= slowest
    top = [t for t in figures["before_after"].data if t.xaxis in (None, "x")]  # the top panel: both runs, one axis
    assert {t.name for t in top} >= {"A", "B"} and len({t.yaxis for t in top}) == 1
    page = write_compare_report(comparison, tmp_path / "compare.html").read_text()
    shown = visible_text(page)
    assert not SCIENTIFIC.search(shown), SCIENTIFIC.search(shown)
    assert "kv-cache-on-the-host against kv-cache-on-the-host-fixed" in shown
    assert re.search(r"configuration: offload_kqv\s+False\s+True", shown)  # what differs, at the top
    assert "18.0x faster" in " ".join(shown.split())
    # the finding that disappeared links to its card, A's copies.cross-device
    index = next(i for i, f in enumerate(comparison.findings_a) if f.id == "copies.cross-device")
    assert f"href='#finding-a-{index}'" in page and f"id='finding-a-{index}'" in page


def test_trace_report_shows_no_scientific_notation(tmp_path) -> None:
    page = write_report(DATASETS / "h200-bench-doctor" / "partial-offload-as-one-sweep-with-all-layers.trace",
                        tmp_path / "r.html").read_text()
    shown = visible_text(page)
    assert not SCIENTIFIC.search(shown), SCIENTIFIC.search(shown)
    assert "GiB" in shown and " MB" not in shown and "intercept (interval)" in shown


# -- views per configuration -------------------------------------------------------------------------------------------

SPLITS = DATASETS / "h200x2-splits"


def legend_colors(fig) -> dict[str, set[str]]:
    """Each legend entry (legend group) with the colours its traces are drawn in."""
    found: dict[str, set[str]] = {}
    for t in fig.data:
        color = t.marker.color if t.type == "bar" else t.line.color
        found.setdefault(t.legendgroup or t.name, set()).add(str(color))
    return found


def test_step_time_has_a_panel_per_configuration_with_its_median_band_and_a_log_toggle() -> None:
    a = Analysis(dataset("cpu-sweep-split-configs"))
    fig = standard_figures(a)["step_time_vs_context"]
    # one panel per configuration, each on its own time axis: 28 ms, 43 ms and 183 ms do not squash one another
    titles = [annotation.text for annotation in fig.layout.annotations]
    assert [t.split(": median")[0] for t in titles] == a.configs
    axis_of = {t.legendgroup: t.yaxis for t in fig.data if t.mode == "markers" and t.legendgroup in a.configs}
    assert sorted(axis_of.values()) == ["y", "y2", "y3"]
    for config in a.configs:
        bands = a.step_time_bands[(a.step_time_bands["config"] == config) & (a.step_time_bands["n_tokens"] == 1)]
        median = next(t for t in fig.data if t.name == f"median: {config}")
        band = next(t for t in fig.data if t.name == f"interquartile range: {config}")
        assert median.yaxis == band.yaxis == axis_of[config] and len(bands) == 3  # a median per depth
        assert np.allclose(median.y, bands["median_ns"] / 1e6)
        assert np.allclose(sorted(band.y), sorted(np.concatenate([bands["p25_ns"], bands["p75_ns"]]) / 1e6))
        decode = a.complete_steps[(a.complete_steps["config"] == config) & ~a.complete_steps["cold_start"]]
        assert all(lo <= m <= hi for lo, m, hi in zip(bands["p25_ns"], bands["median_ns"], bands["p75_ns"]))
        assert bands["steps"].sum() == len(decode[decode["n_tokens"] == 1])
    # the toggle switches every panel's axis
    linear, log = (button.args[0] for button in fig.layout.updatemenus[0].buttons)
    assert {k for k, v in log.items() if v == "log"} == {"yaxis.type", "yaxis2.type", "yaxis3.type"}
    assert {k for k, v in linear.items() if v == "linear"} == {"yaxis.type", "yaxis2.type", "yaxis3.type"}


def test_one_configuration_of_a_fast_and_a_slow_pair_keeps_its_own_axis(tmp_path) -> None:
    a = Analysis(DATASETS / "h200-bench-doctor" / "partial-offload-as-one-sweep-with-all-layers.trace")
    ranking = a.config_ranking
    assert list(ranking["config"]) == ["all layers", "8 of 16 layers"] and list(ranking["rank"]) == [1, 2]
    assert ranking["slowdown"].iloc[1] > 10 and ranking["tokens_per_s"].iloc[0] > 500
    fig = standard_figures(a)["step_time_vs_context"]
    fast = next(t for t in fig.data if t.name == "all layers")
    slow = next(t for t in fig.data if t.name == "8 of 16 layers")
    assert fast.yaxis != slow.yaxis and np.median(fast.y) < 0.1 * np.median(slow.y)
    # the ranked table leads the report, with tokens/s, fastest first
    page = write_report(a, tmp_path / "r.html").read_text()
    shown = visible_text(page)
    assert page.index("Configurations ranked by median decode time per token") < page.index(">Findings</h2>")
    ranked = shown[shown.index("Configurations ranked"):]
    assert "tokens_per_s" in ranked and ranked.index("all layers") < ranked.index("8 of 16 layers")
    assert "15.0x" in ranked  # 20.8 against 1.39 ms per token


def test_breakdown_has_a_row_per_gpu_with_its_busy_share_and_never_adds_the_gpus_up() -> None:
    for split in ("tensor", "layer"):
        a = Analysis(SPLITS / f"x2-kernels-{split}.trace")
        fig = standard_figures(a)["step_breakdown"]
        titles = [annotation.text for annotation in fig.layout.annotations]
        decode = a.complete_steps.loc[a.complete_steps["n_tokens"] == 1, "step"]
        busy = a.gpu_busy[a.gpu_busy["step"].isin(decode)].groupby("device")["busy_fraction"].median()
        assert titles[1:] == [f"GPU {gpu} (kernels collected): busy {value(busy[gpu], 'share')} of a step (median)"
                              for gpu in ("CUDA0", "CUDA1")]
        wall = a.complete_steps.set_index("step")["wall_ns"] / 1e6
        for gpu, axis in (("CUDA0", "y2"), ("CUDA1", "y3")):
            kernels = [t for t in fig.data if t.yaxis == axis and t.name != "idle"]
            stacked = pd.concat([pd.Series(t.y, index=t.x) for t in kernels]).groupby(level=0).sum()
            own = a.gpu_families[a.gpu_families["device"] == gpu].groupby("step")["time_ns"].sum() / 1e6
            assert np.allclose(stacked.sort_index(), own.reindex(stacked.index).sort_index())
            # one GPU's kernels fit in its steps: the tensor split's two GPUs together held 1.9x the step
            assert (stacked / wall.reindex(stacked.index)).median() < 1.0
        # the tensor split keeps both GPUs busy; the layer split's pipeline bubble idles each half the step
        assert ((busy > 0.7) if split == "tensor" else (busy < 0.6)).all()


def test_legend_entries_have_colours_of_their_own_across_groups() -> None:
    figures = standard_figures(Analysis(SPLITS / "x2-kernels-tensor.trace"))
    breakdown = figures["step_breakdown"]
    colors = legend_colors(breakdown)
    assert all(len(c) == 1 for c in colors.values())  # matmul is one colour on both GPUs' rows
    flat = [next(iter(c)) for c in colors.values()]
    assert len(flat) == len(set(flat)), colors
    assert colors["GPU kernels: idle"] == {CATEGORY_COLORS["gpu_idle"]}  # idle in grey, not a kernel family's hue
    entries = {t.legendgroup for t in breakdown.data}
    assert {"GPU kernels: matmul", "GPU kernels: flash_attn", "decoding thread: backend Meta(CUDA0,CUDA1): compute / "
            "launches", "decoding thread: host: outputs"} <= entries
    # shown once in the legend, drawn on each GPU's row
    assert sum(bool(t.showlegend) for t in breakdown.data if t.legendgroup == "GPU kernels: matmul") == 1
    assert len({t.yaxis for t in breakdown.data if t.legendgroup == "GPU kernels: matmul"}) == 2
    for name in ("memory_over_time", "step_time_vs_context"):
        fig = figures[name]
        drawn = {group: c - {"None"} for group, c in legend_colors(fig).items() if not group.startswith("event ")}
        assert all(len(c) <= 1 for c in drawn.values()), (name, drawn)
    # weights in a buffer and over the mapped model file sat side by side in one blue
    owners = {group: next(iter(c)) for group, c in legend_colors(figures["memory_over_time"]).items() if c}
    assert {"weights", "weights (mapped file)"} <= set(owners) and len(set(owners.values())) == len(owners), owners


def test_breakdown_memory_and_copies_are_drawn_per_configuration(tmp_path) -> None:
    a = Analysis(dataset("cpu-sweep-split-configs"))
    figures = standard_figures(a)
    for config in a.configs:
        part = a.of_config(config)
        breakdown = figures[f"step_breakdown: {config}"]
        steps = {x for t in breakdown.data for x in t.x}
        decode = a.complete_steps[(a.complete_steps["config"] == config) & (a.complete_steps["n_tokens"] == 1)]
        assert steps == set(decode["step"])  # that configuration's steps, and no other's
        memory = figures[f"memory_over_time: {config}"]
        assert len(memory.layout.annotations) == part.buffers["location"].nunique()
    # the local configurations copy nothing; the layer split copies between its two servers
    assert [name for name in figures if name.startswith("copy_matrix")] == ["copy_matrix: 2 rpc, layer split"]
    heat = figures["copy_matrix: 2 rpc, layer split"].data[0]
    pairs = a.of_config("2 rpc, layer split").copy_pairs
    assert heat.z[list(heat.y).index("rpc:0")][list(heat.x).index("rpc:1")] == pytest.approx(
        pairs.set_index(["src_device", "dst_device"]).loc[("RPC0", "RPC1"), "time_per_step_ns"] / 1e6)
    page = write_report(a, tmp_path / "r.html").read_text()
    assert page.count("Plotly.newPlot(") == len(figures)
    assert [f"Configuration {c}" in visible_text(page) for c in a.configs] == [True] * 3


def test_rpc_devices_are_called_what_the_configuration_called_them(tmp_path) -> None:
    a = Analysis(dataset("cpu-sweep-split-configs"))
    figures = standard_figures(a)
    config = "2 rpc, layer split"
    legend = [t.name for t in figures[f"step_breakdown: {config}"].data]
    # the engine names the second server's backend RPC0[127.0.0.1:44421], its device RPC1: both are rpc:1
    assert "backend rpc:0: compute / launches" in legend and "backend rpc:1: compute / launches" in legend
    memory = figures[f"memory_over_time: {config}"]
    assert [annotation.text for annotation in memory.layout.annotations] == ["CPU", "rpc:0", "rpc:1"]
    strings = [s for name, fig in figures.items() if name.endswith(config) for s in strings_of(fig)]
    assert not any("RPC0[" in s for s in legend) and not any(s.startswith("RPC") for s in strings)
    assert any("rpc:1 (engine device RPC1 at 127.0.0.1:44421)" in s for s in strings)  # the address on hover
    # the report's tables say it as the plots do
    shown = visible_text(write_report(a, tmp_path / "r.html").read_text())
    assert "RPC0[" not in shown and "split:rpc:1" in shown
    # llama-bench's own --rpc list names no configuration: its devices keep the registry's names, backends too
    bench = standard_figures(Analysis(dataset("cpu-markup-tensor-names")))
    legend = [t.name for t in bench["step_breakdown"].data]
    assert {"backend RPC0: compute / launches", "backend RPC1: compute / launches"} <= set(legend)
    assert not any("[" in name for name in legend)


def test_a_later_configuration_rpc_device_is_its_rpc0_not_the_engine_count(engine_build, tiny_model) -> None:
    from gpuscope.runs import sweep
    from gpuscope.session import SplitConfig

    # in one process the engine counts RPC devices over the sweep (and over the tests before this one): the second
    # configuration's only one is RPC2 or later, never RPC0
    configs = [SplitConfig.parse("devices=rpc:0,rpc:1 split_mode=layer n_ctx=128 n_threads=1"),
               SplitConfig.parse("devices=rpc:0 n_gpu_layers=2 n_ctx=128 n_threads=1")]
    a = Analysis(sweep(configs, tiny_model, engine=engine_build.root, depths=[0], n_steps=4, progress=False))
    later = a.of_config(a.configs[1])
    info = later.table("device_info")
    (engine_name,) = info.loc[(info["backend"] == "RPC") & (info["process"] == "main"), "name"]
    assert engine_name.startswith("RPC") and int(engine_name[3:]) >= 2
    figures = standard_figures(a)
    panels = [annotation.text for annotation in figures[f"memory_over_time: {a.configs[1]}"].layout.annotations]
    assert "rpc:0" in panels and engine_name not in panels
    legend = [t.name for t in figures[f"step_breakdown: {a.configs[1]}"].data]
    assert "backend rpc:0: compute / launches" in legend
    assert not any("RPC" in name for name in legend + panels)
    hovers = [s for s in strings_of(figures[f"memory_over_time: {a.configs[1]}"]) if "engine device" in s]
    assert hovers and all(f"engine device {engine_name} at 127.0.0.1:" in s for s in hovers)


# -- the timeline: every lane on one clock ---------------------------------------------------------------------------

SWEEP = DATASETS / "cpu" / "cpu-sweep-split-configs.trace"  # three configurations, one after another, 3 depths each
TWO_GPUS = DATASETS / "h200x2-splits" / "x2-kernels-tensor.trace"  # 57,410 kernels on CUDA0 and CUDA1


def lane_traces(fig, lane: str) -> list:
    return [t for t in fig.data if t.legendgroup == lane]


def test_timeline_draws_each_lane_on_the_trace_clock_with_bands_per_configuration_and_depth() -> None:
    a = Analysis(SWEEP)
    fig = standard_figures(a)["timeline"]
    assert fig.layout.meta["lanes"] == ["configuration", "depth", "steps", "splits", "syncs", "copies", "allocator"]
    assert fig.layout.meta["t0_ns"] == a.t0_ns == min(int(f["ts_ns"].min()) for f in a.trace.tables.values()
                                                      if "ts_ns" in f.columns and len(f))
    # every step a bar from its begin to its end, in seconds since the trace's first event
    steps = a.steps.set_index("step")
    drawn = sorted((base, base + width) for t in lane_traces(fig, "steps") for base, width in zip(t.base, t.x))
    expected = sorted(zip((steps["t_begin_ns"] - a.t0_ns) / 1e9, (steps["t_end_ns"] - a.t0_ns) / 1e9))
    assert np.allclose(drawn, expected)
    # one band per configuration, in the order they ran, over exactly its steps, and a background band behind every
    # lane; one per depth within each (0, 256, 512 cells)
    bands = lane_traces(fig, "configuration")
    assert [t.text[0] for t in bands] == a.configs == ["local", "2 rpc, layer split", "local, FA off"]
    for band in bands:
        mine = a.steps[a.steps["config"] == band.name]
        assert band.base[0] == pytest.approx((mine["t_begin_ns"].min() - a.t0_ns) / 1e9)
        assert band.base[0] + band.x[0] == pytest.approx((mine["t_end_ns"].max() - a.t0_ns) / 1e9)
        assert any(s.x0 == pytest.approx(band.base[0]) and s.yref.startswith("y") for s in fig.layout.shapes)
    depths = lane_traces(fig, "depth")
    assert [label for t in depths for label in t.text] == ["depth 0", "depth 256", "depth 512"] * 3
    # the configuration's colour is the one every other figure gives it
    points = {t.name: t.marker.color for t in standard_figures(a)["step_time_vs_context"].data if t.mode == "markers"}
    assert all(t.marker.color == points[t.name] for t in lane_traces(fig, "steps"))
    # each event lane holds every event of its table, at its time
    syncs = a.table("sync")
    assert sum(len(t.x) for t in lane_traces(fig, "syncs")) == len(syncs)
    sync_starts = sorted(b for t in lane_traces(fig, "syncs") for b in t.base)
    assert np.allclose(sync_starts, sorted((syncs["ts_ns"] - syncs["duration_ns"] - a.t0_ns) / 1e9))
    assert sum(len(t.x) for t in lane_traces(fig, "copies")) == len(a.table("copy"))
    memory = {t.name: t for t in lane_traces(fig, "memory")}
    assert set(memory) == set(a.buffers["location"]) and all(t.xaxis == "x2" for t in memory.values())
    assert fig.layout.xaxis2.title.text == "time since the trace began (s)" and fig.layout.xaxis.matches == "x2"


def test_every_time_axis_of_the_report_counts_from_the_trace_origin() -> None:
    a = Analysis(dataset("cpu-allocator-churn"))
    figures = standard_figures(a)
    time_axes = [(name, fig.layout[axis]) for name, fig in figures.items() for axis in fig.layout
                 if axis.startswith("xaxis") and fig.layout[axis].title.text
                 and "time" in fig.layout[axis].title.text]
    assert {name for name, _ in time_axes} == {"timeline", "memory_over_time", "allocator_timeline"}
    assert {axis.title.text for _, axis in time_axes} == {"time since the trace began (s)"}
    # one event, one x: the re-reserves and the buffer allocations in the allocator plot and on the timeline
    reserves = (a.table("sched_reserve")["ts_ns"] - a.t0_ns) / 1e9
    allocator = [t for t in figures["allocator_timeline"].data if t.name.startswith("re-reserve")]
    on_timeline = [t for t in lane_traces(figures["timeline"], "allocator") if t.name.startswith("re-reserve")]
    assert np.allclose(sorted(x for t in allocator for x in t.x), sorted(reserves))
    assert np.allclose(sorted(x for t in on_timeline for x in t.x), sorted(reserves))
    # the first allocation: where the memory plot and the timeline's memory row both start
    first = (a.buffers["alloc_ns"].min() - a.t0_ns) / 1e9
    assert min(min(t.x) for t in figures["memory_over_time"].data) == pytest.approx(first)
    assert min(min(t.x) for t in lane_traces(figures["timeline"], "memory")) == pytest.approx(first)


def test_timeline_has_a_lane_per_gpu_and_bounds_what_it_draws() -> None:
    a = Analysis(TWO_GPUS)
    fig = standard_figures(a)["timeline"]
    kernels = a.trace.tables["kernels"]
    lanes = fig.layout.meta["lanes"]
    assert lanes[-2:] == ["CUDA0 kernels", "CUDA1 kernels"] and {"FA plans", "splits", "copies"} <= set(lanes)
    for device in ("CUDA0", "CUDA1"):
        drawn = lane_traces(fig, f"{device} kernels")
        assert sum(len(t.x) for t in drawn) <= MAX_SPANS
        # nothing lost: the kernels drawn alone and those each merged span says it holds add up to the device's
        merged = [t for t in drawn if t.name.endswith(", merged")]
        held = sum(int(h.split(" ", 1)[0]) for t in merged for h in t.hovertext)
        alone = sum(len(t.x) for t in drawn if t not in merged)
        # each merged span drawn as its main family, merged (matmul, merged), in that family's colour
        assert {t.name for t in merged} <= {f"{family}, merged" for family in kernels["family"]}
        colour = {t.name: t.marker.color for t in drawn}
        assert all(colour[t.name] == colour.get(t.name.removesuffix(", merged"), t.marker.color) for t in merged)
        assert held + alone == int((kernels["device"] == device).sum()) == 28705
        assert fig.layout.meta["merged"][f"{device} kernels"] == [28705, MAX_SPANS]
        # the earliest kernel of the device starts where the profiler put it, on the trace's clock
        first = (kernels.loc[kernels["device"] == device, "ts_ns"].min() - a.t0_ns) / 1e9
        assert min(b for t in drawn for b in t.base) == pytest.approx(first)
    assert "merged where items crowd (more than 1500 in a lane): syncs, copies, CUDA0 kernels, CUDA1 kernels" \
        in fig.layout.title.text  # the view says so
    assert len(fig.to_json()) < 2 << 20
    # under the bound, each kernel is drawn on its own
    layer = Analysis(DATASETS / "h200x2-splits" / "x2-kernels-layer.trace")
    kernels = layer.trace.tables["kernels"]
    whole = timeline(layer.steps, layer.bands, layer.trace.tables, layer.buffers, t0_ns=layer.t0_ns,
                     max_spans=len(kernels))
    assert whole.layout.meta["merged"] == {} and "merged" not in whole.layout.title.text
    for device, count in kernels["device"].value_counts().items():
        assert sum(len(t.x) for t in lane_traces(whole, f"{device} kernels")) == count


def test_findings_carry_the_span_they_refer_to() -> None:
    churn = Analysis(dataset("cpu-allocator-churn"))
    by_id = {f.id: f for f in diagnose(churn)}
    # the reallocations behind allocator.churn (those inside steps): from the first to the last
    reallocs = churn.table("gallocr_realloc")[churn.in_step("gallocr_realloc").notna().to_numpy()]
    assert by_id["allocator.churn"].time_range_ns == (reallocs["ts_ns"].min(), reallocs["ts_ns"].max())
    # the steps that rebuilt their graph: from the first one's begin to the last one's end
    rebuilt = churn.steps.set_index("step").loc[by_id["graph.rebuilt"].rows["step"]]
    assert by_id["graph.rebuilt"].time_range_ns == (rebuilt["t_begin_ns"].min(), rebuilt["t_end_ns"].max())
    assert by_id["graph.rebuilt"].to_dict()["time_range_ns"] == list(by_id["graph.rebuilt"].time_range_ns)
    # a finding about one configuration's placement: that configuration's run
    sweep = Analysis(SWEEP)
    imbalance = next(f for f in diagnose(sweep) if f.id == "memory.split-imbalance")
    band = sweep.bands[(sweep.bands["level"] == "configuration") & (sweep.bands["config"] == imbalance.config)]
    assert imbalance.time_range_ns == (band["start_ns"].iloc[0], band["end_ns"].iloc[0])
    # the recording as a whole (events lost somewhere in it) has no span
    lost = Analysis(dataset("cpu-lost-events"))
    assert next(f for f in diagnose(lost) if f.id == "trace.lost-events").time_range_ns is None


def test_report_links_finding_cards_to_the_timeline_and_offers_the_perfetto_export(tmp_path) -> None:
    a = Analysis(dataset("cpu-allocator-churn"))
    page = write_report(a, tmp_path / "r.html").read_text()
    assert page.index(">Findings</h2>") < page.index(">Timeline</h2>") < page.index(">Plots</h2>")
    assert "id=\"gpuscope-timeline\"" in page and "getElementById('gpuscope-timeline')" in page
    for finding in diagnose(a):
        start, end = ((t - a.t0_ns) / 1e9 for t in finding.time_range_ns)
        assert f"data-from='{start!r}' data-to='{end!r}'" in page
    # the export inside the page: the same bytes the exporter writes, a trace Perfetto reads
    link = re.search(r"download='cpu-allocator-churn.pftrace' href='data:application/octet-stream;base64,([^']+)'",
                     page)
    data = base64.b64decode(link.group(1))
    assert data == perfetto_bytes(a.trace)[0]
    (tmp_path / "t.pftrace").write_bytes(data)
    assert len(read_packets(tmp_path / "t.pftrace")) > 100 and "ui.perfetto.dev" in visible_text(page)
    assert not (tmp_path / "r.pftrace").exists()


def test_a_large_trace_report_stays_small_with_its_perfetto_export_beside_it(tmp_path) -> None:
    out = write_report(TWO_GPUS, tmp_path / "two-gpus.html")
    page = out.read_text()
    beside = tmp_path / "two-gpus.pftrace"
    assert beside.stat().st_size > EMBED_LIMIT and out.stat().st_size < 8 << 20
    assert "href='two-gpus.pftrace'" in page and "merged where their items crowd" in page
    kernels = [p for p in read_packets(beside) if p.HasField("track_event") and p.track_event.name == "Memset"]
    assert kernels  # every kernel is in the export, merged ones too


def test_perfetto_link_for_notebooks(tmp_path) -> None:
    shutil.copytree(dataset("cpu-sweep-gemma3"), tmp_path / "run.trace")
    link = perfetto_link(Analysis(tmp_path / "run.trace"))
    assert link.path == tmp_path / "run.pftrace" and link.counts["slices"] > 0
    shown = link._repr_html_()
    encoded = re.search(r"href='data:application/octet-stream;base64,([^']+)'", shown).group(1)
    assert base64.b64decode(encoded) == link.path.read_bytes()
    assert "ui.perfetto.dev" in shown and "ui.perfetto.dev" in repr(link)
