"""Before and after on real traces: two recordings of two different builds, the CLI, and the A/B runner end to
end on the CPU (the fork-like build that churns its allocator against the stock one)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis_traces import alternating_engine, bench, engine, rpc, scratch, tiny_model
from gpuscope.analysis import Analysis
from gpuscope.compare.compare import compare, context_bucket
from gpuscope.report import compare_html
from gpuscope.trace.model import load_trace


def test_context_buckets() -> None:
    assert context_bucket([0, 255, 256, 511, 512, 1023, 1024, 5000]).tolist() == [0, 0, 256, 256, 512, 512, 1024, 4096]


def test_compare_two_builds() -> None:
    before, after = Analysis(rpc("rpc-alternating", build="alternating")), Analysis(rpc("rpc-clean"))
    result = compare(before, after)
    findings = result.findings.set_index("id")["change"]
    assert findings["allocator.churn"] == "disappeared" and findings["graph.rebuilt"] == "disappeared"
    counts = result.event_counts.set_index(["kind", "reason"])
    assert counts.loc[("gallocr_realloc", "n_nodes"), "per_step_b"] == 0
    assert counts.loc[("gallocr_realloc", "n_nodes"), "per_step_a"] >= 0.4
    # every step of the fork-like build re-reserves; the stock build never does
    assert counts.loc[("sched_reserve", "alloc_failed"), "per_step_a"] >= 0.9
    assert counts.loc[("sched_reserve", "alloc_failed"), "per_step_b"] == 0
    syncs = result.syncs.set_index(["reason"])
    assert "realloc" in syncs.index and (syncs.loc[["realloc"], "syncs_per_step_b"] == 0).all()
    # a verdict only where its interval excludes zero, and then in the direction of its sign
    for row in result.step_time.itertuples():
        if row.verdict == "B faster":
            assert row.ci_high_ns < 0
        elif row.verdict == "B slower":
            assert row.ci_low_ns > 0
        else:
            assert row.ci_low_ns <= 0 <= row.ci_high_ns
    assert len(result.step_time) >= 1
    assert json.dumps(result.to_dict())  # JSON-ready
    assert "<table" in compare_html(result)


def test_compare_a_run_with_itself_has_no_verdict() -> None:
    trace = bench()
    result = compare(Analysis(trace), Analysis(trace))
    assert (result.step_time["diff_ns"] == 0).all()
    assert set(result.step_time["verdict"]) == {"no clear difference"}
    assert (result.event_counts["per_step_delta"] == 0).all() and result.fa_plans.empty
    assert set(result.findings["change"]) <= {"persists"}


def test_compare_cli(tmp_path) -> None:
    a, b = str(rpc("rpc-alternating", build="alternating").path), str(rpc("rpc-clean").path)
    html = tmp_path / "compare.html"
    done = subprocess.run([sys.executable, "-m", "gpuscope.cli", "compare", a, b, "-o", str(html)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "== Findings" in done.stdout and "allocator.churn" in done.stdout and html.is_file()
    as_json = subprocess.run([sys.executable, "-m", "gpuscope.cli", "compare", a, b, "--json"], capture_output=True,
                             text=True)
    sections = set(json.loads(as_json.stdout))
    assert {"step_time", "event_counts", "fa_plans", "allocations", "syncs", "findings"} <= sections


def test_ab_runner_end_to_end_on_the_cpu() -> None:
    out = scratch() / "ab"
    done = subprocess.run([sys.executable, "-m", "gpuscope.cli", "ab", "--a", str(alternating_engine().root),
                           "--b", str(engine().root), "--model", str(tiny_model()),
                           "--config", "devices=cpu n_threads=1",
                           "--depths", "0,32", "--steps", "8", "--rounds", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = load_trace(out / "a.trace"), load_trace(out / "b.trace")
    assert [run["run"] for run in a.meta["runs"]] == [0, 1] and a.meta["arm"] == "A" and b.meta["arm"] == "B"
    # interleaved: round 1 runs A then B, round 2 B then A
    spans = {(arm, run): frame["ts_ns"].agg(["min", "max"]).tolist()
             for arm, trace in (("a", a), ("b", b)) for run, frame in trace.tables["decode_begin"].groupby("run")}
    assert spans[("a", 0)][1] < spans[("b", 0)][0] < spans[("b", 1)][0] < spans[("a", 1)][0]
    result = json.loads((out / "compare.json").read_text())
    changes = {f["id"]: f["change"] for f in result["findings"]}
    assert changes.get("allocator.churn") == "disappeared"
    assert (out / "compare.html").is_file() and "verdict" in done.stdout


def test_bench_analysis_scales_a_real_trace() -> None:
    source = bench()
    done = subprocess.run([sys.executable, "-m", "gpuscope.cli", "bench", "analysis", "--trace", str(source.path),
                           "--events", "20000,60000", "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "real recorded events" in done.stdout and "shifted copies of the source" in done.stdout
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert [f["target"] for f in figures] == [20000, 60000]
    per_copy = sum(len(frame) for frame in source.tables.values())
    for f in figures:
        assert f["events"] >= f["target"] and f["events"] == f["copies"] * per_copy
        # a clean run; the copies repeat its steps, and measurement.noisy (an info) says when this shared machine
        # was busy while it was recorded
        assert f["steps"] == f["copies"] * len(source.tables["decode_begin"])
        assert [found for found in f["findings"] if found != "measurement.noisy"] == []


DATASETS = Path(__file__).resolve().parent.parent / "datasets"
SPEED = re.compile(r"\[([^\]]+), 1 token\(s\), context (\d+)\+\] B is ([\d.]+)x (faster|slower): ([\d.]+) -> ([\d.]+) "
                   r"ms/token, ([\d.]+) -> ([\d.]+) tokens/s")


def _decode_median_ms(trace: Path, low: int, high: int) -> float:
    steps = Analysis(trace).complete_steps
    chosen = steps[(steps["n_tokens"] == 1) & (steps["context"] >= low) & (steps["context"] < high)]
    return float(np.median(chosen["wall_ns"])) / 1e6


def test_a_problem_and_its_fix_read_as_a_speed_up_and_what_differs() -> None:
    """The H200's KV cache on the host against the same run with it on the GPU: labelled differently ('kv on host',
    'kv on the GPU'), one configuration each, so they pair; the text says the speed-up per context bucket as a ratio
    with ms/token and tokens/s, from the traces' own medians, and names the setting that differs."""
    a, b = DATASETS / "h200-bench-doctor" / "kv-cache-on-the-host.trace", \
        DATASETS / "h200-bench-doctor" / "kv-cache-on-the-host-fixed.trace"
    done = subprocess.run([sys.executable, "-m", "gpuscope.cli", "compare", str(a), str(b), "--width", "100"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert max(map(len, text.splitlines())) <= 100
    words = " ".join(text.split())  # lines wrapped at the width
    assert words.startswith("A: kv-cache-on-the-host (") and " B: kv-cache-on-the-host-fixed (" in words
    assert "configuration: offload_kqv: False -> True" in words
    found = {int(m[2]): m for m in SPEED.finditer(words)}
    assert set(found) == {0, 2048, 4096}
    for low, high in ((0, 256), (2048, 4096), (4096, 8192)):
        match = found[low]
        before, after = _decode_median_ms(a, low, high), _decode_median_ms(b, low, high)
        assert match[1] == "kv on host / kv on the GPU" and match[4] == "faster"
        assert float(match[3]) == pytest.approx(before / after, rel=0.006)
        assert float(match[5]) == pytest.approx(before, rel=0.006)
        assert float(match[6]) == pytest.approx(after, rel=0.006)
        assert float(match[7]) == pytest.approx(1e3 / before, rel=0.006)
        assert float(match[8]) == pytest.approx(1e3 / after, rel=0.006)
    assert float(found[4096][3]) > 10  # the 11x: no '% faster' that reads as less
    assert "% faster" not in text and "disappeared  copies.cross-device" in text


def test_a_command_line_difference_is_named() -> None:
    """Two llama-bench recordings on two H200s: the flag that differs, with its value, and the depths."""
    comparison = compare(Analysis(DATASETS / "h200x2-splits" / "x2-sm-layer-nkvo.trace"),
                         Analysis(DATASETS / "h200x2-splits" / "x2-sm-layer-ts1-1.trace"))
    assert comparison.names == ("x2-sm-layer-nkvo", "x2-sm-layer-ts1-1")
    changes = comparison.differences[comparison.differences["what"] == "command"]
    assert changes[["a", "b"]].values.tolist() == [["-nkvo 1", "(none)"], ["-d 0,2048", "-d 0,8192,32768"]]
    assert [line.split(" B is ")[1].split(":")[0] for line in comparison.verdict_lines()] == ["2.55x faster"]
