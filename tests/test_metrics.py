"""`gpuscope metrics` proved with real parts: Debian's Prometheus server scraping the exporter that follows a real
llama-server (the hooked CPU build, the default model) under a bounded client loop, queried through Prometheus's
HTTP API; rings of real writers that exit, vanish, are replaced or are no ring; recorded traces fed through the
meter and checked against the analyses; the Grafana dashboard and docs/metrics.md checked against the series.

The llama-server test needs `prometheus` on PATH (`apt-get install prometheus`) and is skipped without it."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from gpuscope.analysis.facade import Analysis
from gpuscope.analysis.memory import held_now
from gpuscope.analysis.steps import is_decode
from gpuscope.bench import metrics as metrics_bench
from gpuscope.metrics.exporter import Exporter
from gpuscope.metrics.meter import Meter
from gpuscope.metrics.series import Series, definitions, exported_names
from gpuscope.ring import native
from gpuscope.session.rpc import free_port
from gpuscope.trace.model import load_trace
from ring_programs import wait_for

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT / "datasets"
EMITTER = Path(__file__).with_name("record_emitter.py")
GPUSCOPE = [sys.executable, "-m", "gpuscope.cli"]
LABELS = {"ring": "t", "model": "m", "config": "c", "build": "b"}
PROMETHEUS = shutil.which("prometheus")


def value(series: Series, name: str, **labels) -> float:
    return series.registry.get_sample_value(name, {**LABELS, **labels}) or 0.0


def total(series: Series, name: str, **labels) -> float:
    """The sum of a sample over every label set that has `labels`."""
    found = 0.0
    for family in series.registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                found += sample.value
    return found


def fed(trace_path: Path, polls: int = 7, until: int | None = None, **options) -> tuple[Series, list]:
    """A recorded trace's events through a Meter, cut into `polls` polls by ticket (a step's events fall in two
    polls now and then, as they do when a live ring is read), up to ticket `until`; the series and the conditions
    that fired."""
    trace = load_trace(trace_path)
    series = Series()
    meter = Meter(series, LABELS, **options)
    last = until if until is not None else \
        max(int(frame["seq"].max()) for frame in trace.tables.values() if len(frame) and "seq" in frame)
    edges = np.linspace(0, last + 1, polls + 1).astype(np.int64)
    fired = []
    for begin, end in zip(edges[:-1], edges[1:]):
        chunk = {kind: frame[((frame["seq"] >= begin) & (frame["seq"] < end)).to_numpy(bool)].reset_index(drop=True)
                 for kind, frame in trace.tables.items() if "seq" in frame}
        now = max((int(frame["ts_ns"].max()) for frame in chunk.values() if len(frame)), default=0)
        fired += meter.feed(chunk, now)
    fired += meter.finish(now)
    return series, fired


# -- the meter against the analyses, on recorded traces --------------------------------------------------------

def test_steps_counted_live_are_the_analysis_steps():
    path = DATASETS / "cpu" / "cpu-sweep-gemma3.trace"
    series, _ = fed(path)
    steps = Analysis(path).steps
    done = steps[steps["complete"]]
    decode = done[is_decode(done)]
    assert value(series, "gpuscope_steps_total", phase="decode", status="ok") == len(decode) > 0
    assert value(series, "gpuscope_steps_total", phase="prefill", status="ok") == len(done) - len(decode)
    assert value(series, "gpuscope_step_seconds_count", phase="decode") == len(decode)
    assert value(series, "gpuscope_step_seconds_sum", phase="decode") == pytest.approx(decode["wall_ns"].sum() / 1e9)
    assert value(series, "gpuscope_step_tokens_sum", phase="prefill") == done.loc[~is_decode(done), "n_tokens"].sum()


def test_fa_plans_with_no_kernel_are_counted_by_shape_and_fire_a_capture():
    path = DATASETS / "h100-fa-routes" / "d160-fa1.trace"
    series, fired = fed(path)
    none = Analysis(path).fa_none
    assert len(none) > 0
    shapes = {f"k{row.head_dim_k}v{row.head_dim_v} {row.type_k}/{row.type_v}" for row in none.itertuples()}
    assert shapes == {"k160v160 f16/f16"}
    assert total(series, "gpuscope_fa_no_kernel_total", shape="k160v160 f16/f16") == len(none)
    assert total(series, "gpuscope_fa_plans_total", kernel="none") == len(none)
    assert any(f.reason == "fa_no_kernel" and "k160v160" in f.detail for f in fired)
    clean, fired_clean = fed(DATASETS / "h100-fa-routes" / "d256-fa1-kf16-vf16.trace")
    assert total(clean, "gpuscope_fa_no_kernel_total") == 0 and not fired_clean


def test_replans_every_step_fire_on_allocator_churn_only():
    churn = DATASETS / "cpu" / "cpu-allocator-churn.trace"
    series, fired = fed(churn)
    a = Analysis(churn)
    assert total(series, "gpuscope_replans_total") == len(a.table("gallocr_realloc")) > 0
    reasons = a.table("gallocr_realloc")["reason"].astype(str).value_counts()
    for reason, count in reasons.items():
        assert total(series, "gpuscope_replans_total", reason=reason) == count
    assert "replans_every_step" in {f.reason for f in fired}
    _, fired_clean = fed(DATASETS / "cpu" / "cpu-sweep-gemma3.trace")
    assert "replans_every_step" not in {f.reason for f in fired_clean}


def test_copies_syncs_memory_and_placements_match_the_tables():
    copies = DATASETS / "cpu" / "cpu-kv-on-host-copies.trace"
    series, _ = fed(copies)
    trace = load_trace(copies)
    copy = trace.tables["copy"]
    for (src, dst), group in copy.groupby([copy["src_device"].astype(str), copy["dst_device"].astype(str)]):
        assert total(series, "gpuscope_copy_bytes_total", src_device=src, dst_device=dst) == group["bytes"].sum()
    sync = trace.tables["sync"]
    assert total(series, "gpuscope_syncs_total") == len(sync)
    assert total(series, "gpuscope_sync_seconds_total") == pytest.approx(sync["duration_ns"].sum() / 1e9)
    # memory held in the middle of the run (by its end the engine freed everything): as held_now says of the
    # buffer events up to then, read at once
    middle = int(trace.tables["decode_begin"]["seq"].median())
    series_then, _ = fed(copies, until=middle)
    buffer = trace.tables["buffer"]
    held = held_now(buffer[buffer["seq"] <= middle])
    assert len(held) >= 3
    for row in held.itertuples():
        assert value(series_then, "gpuscope_memory_bytes", device=row.location, owner=row.owner) == row.bytes > 0
    off = DATASETS / "cpu" / "cpu-ops-off-device.trace"
    series, _ = fed(off, op_names={int(k): v for k, v in load_trace(off).meta["engine"]["ggml_ops"].items()})
    placements = Analysis(off).op_placements
    assert total(series, "gpuscope_ops_off_device_total") == len(placements) > 0
    for op, count in placements["op"].value_counts().items():
        assert total(series, "gpuscope_ops_off_device_total", op=op) == count


def test_label_values_past_their_cap_read_other():
    series = Series()
    values = [series.label("shape", f"k{i}v{i} f16/f16") for i in range(40)]
    assert values[:32] == [f"k{i}v{i} f16/f16" for i in range(32)] and set(values[32:]) == {"other"}
    assert series.label("shape", "k3v3 f16/f16") == "k3v3 f16/f16"  # seen before the cap: kept


# -- the docs and the dashboard name the exported series -------------------------------------------------------

def test_docs_list_every_series_with_its_labels():
    doc = (ROOT / "docs" / "metrics.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(gpuscope_\w+)` \| [a-z]+ \| ([^|]*) \|", doc, re.M)}
    names = {name for name, *_ in definitions()}
    assert set(rows) == names
    for name, _, _, labels in definitions():
        assert set(re.findall(r"`(\w+)`", rows[name])) == set(labels[4:]), name


def test_the_grafana_dashboard_names_only_exported_series():
    dashboard = json.loads((ROOT / "docs" / "grafana" / "gpuscope.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 10
    named = {name for expr in exprs for name in re.findall(r"\bgpuscope_\w+", expr)}
    assert named and named <= exported_names(), named - exported_names()
    # every question of the exporter has a panel
    assert {"gpuscope_step_seconds_bucket", "gpuscope_memory_bytes", "gpuscope_fa_no_kernel_total",
            "gpuscope_copy_bytes_total", "gpuscope_replans_total", "gpuscope_ring_lost_events_total"} <= named


# -- real rings: exiting, vanishing, replaced, not a ring; a port in use --------------------------------------

def _emitter(ring: Path, ready: Path, *options: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(EMITTER), str(native.ring_library()), str(ready), *options],
                            env={**os.environ, "GPUSCOPE_RING": str(ring)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _state(exporter: Exporter, ring: Path) -> str:
    return exporter.followers[ring.absolute()].state


def test_rings_that_exit_vanish_or_are_replaced_leave_the_others_followed(tmp_path, capsys):
    (tmp_path / "junk.ring").write_bytes(b"not a ring at all, just text" * 10)
    steady, short = tmp_path / "steady.ring", tmp_path / "short.ring"
    exporter = Exporter([str(tmp_path / "*.ring"), str(short)])
    programs = [_emitter(steady, tmp_path / "ready1"), _emitter(short, tmp_path / "ready2", "--ticks", "20")]
    try:
        wait_for(lambda: (tmp_path / "ready1").exists() and (tmp_path / "ready2").exists(), 30, "the writers")
        exporter.discover()
        assert programs[1].wait(30) == 0
        wait_for(lambda: exporter.poll() or _state(exporter, short) == "closed", 10, "the short ring's close")
        events = lambda: total(exporter.series, "gpuscope_ring_events_total", ring="steady")  # noqa: E731
        assert _state(exporter, tmp_path / "junk.ring") == "error" and _state(exporter, steady) == "alive"
        short.unlink()  # its engine removes it
        exporter.poll()
        assert _state(exporter, short) == "gone"
        before = events()
        wait_for(lambda: exporter.poll() or events() > before, 10, "the steady ring's events")
        (tmp_path / "ready2").unlink()
        programs.append(_emitter(short, tmp_path / "ready2", "--ticks", "400"))  # a new engine, the same path
        wait_for(lambda: (tmp_path / "ready2").exists(), 30, "the new writer")
        wait_for(lambda: exporter.poll() or _state(exporter, short) == "alive", 10, "the new ring followed")
        assert exporter.followers[short.absolute()].reader.header.writer_pid == programs[2].pid
        assert total(exporter.series, "gpuscope_writer_state", ring="short", state="alive") == 1
        assert total(exporter.series, "gpuscope_writer_state", ring="junk", state="error") == 1
        assert b"gpuscope_ring_events_total" in exporter.scrape()
    finally:
        for program in programs:
            program.kill()
            program.wait()
        exporter.close()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gpuscope metrics:")]
    junk = [line for line in lines if "junk.ring" in line]
    assert len(junk) == 1 and "not followed" in junk[0], lines  # one line, said once
    assert any("short.ring: the ring was removed" in line for line in lines), lines
    assert any("short.ring: following the ring of pid" in line for line in lines), lines


def test_a_port_in_use_is_one_line_and_nothing_serves(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([*GPUSCOPE, "metrics", str(tmp_path / "x.ring"), "--port", str(port), "--duration",
                               "1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"gpuscope: error: port {port} on 127.0.0.1 is in use: another "
                                                "exporter or program serves there (choose another with --port)"]


@pytest.mark.parametrize("options, said", [
    (["--capture-dir", "{blocker}/sub"], "cannot make the folder {blocker}/sub for the trace"),
    (["--capture-dir", "{tmp}/c", "--capture-on", "crash,bogus"], "unknown capture condition 'bogus'"),
    (["--capture-dir", "{tmp}/c", "--capture-seconds", "0"], "capture seconds must be positive"),
    (["--port", "99999"], "'99999' is not a port"),
])
def test_bad_options_are_one_line_and_nothing_serves(tmp_path, options, said):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    options = [part.format(blocker=blocker, tmp=tmp_path) for part in options]
    port = ["--port", str(free_port())] if "--port" not in options else []
    done = subprocess.run([*GPUSCOPE, "metrics", *port, *options, "--duration", "1"], capture_output=True, text=True,
                          timeout=60)
    # one line of error (argparse's usage lines come before its own)
    errors = [line for line in done.stderr.strip().splitlines() if "error:" in line]
    assert done.returncode == 2 and len(errors) == 1, done.stderr
    assert said.format(blocker=blocker) in errors[0] and done.stderr.strip().endswith(errors[0]), done.stderr


# -- Prometheus scraping the exporter of a real llama-server ---------------------------------------------------

def _prometheus_query(port: int, query: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        answer = json.loads(urllib.request.urlopen(url, timeout=5).read())
    except OSError:
        return []
    return answer["data"]["result"] if answer.get("status") == "success" else []


def _number(port: int, query: str) -> float:
    result = _prometheus_query(port, query)
    return sum(float(item["value"][1]) for item in result)


@pytest.mark.skipif(PROMETHEUS is None, reason="Debian's prometheus server is not installed "
                                               "(apt-get install prometheus): the scrape is not proved")
def test_prometheus_scrapes_the_exporter_of_a_real_llama_server(tmp_path, engine_build, gemma):
    ring, captures = tmp_path / "server.ring", tmp_path / "captures"
    exporter_port, prometheus_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
                      f"  - job_name: gpuscope\n    static_configs:\n      - targets: ['127.0.0.1:{exporter_port}']\n")
    processes = []
    server = metrics_bench.LlamaServer(engine_build.program("llama-server"), gemma, ring)
    try:
        exporter = subprocess.Popen(
            [*GPUSCOPE, "metrics", str(ring), str(tmp_path / "more-*.ring"), "--port", str(exporter_port),
             "--interval", "0.25", "--capture-dir", str(captures), "--capture-step-ms", "0.001",
             "--capture-every", "3600", "--capture-seconds", "20"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        processes.append(exporter)
        processes.append(subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for index in range(4):  # the bounded client loop
            assert server.complete(f"Request {index}: tell me about the sea.", 24)
        wait_for(lambda: _prometheus_query(prometheus_port, 'up{job="gpuscope"} == 1'), 60,
                 "Prometheus to scrape the exporter")
        decode = 'gpuscope_step_seconds_count{phase="decode",ring="server"}'
        wait_for(lambda: _number(prometheus_port, decode) >= 4 * 20, 60, "the decode steps in Prometheus")
        labels = _prometheus_query(prometheus_port, decode)[0]["metric"]
        assert labels["model"] == gemma.stem and labels["build"] == engine_build.meta["name"] + "-" + \
            engine_build.meta["key"] and labels["config"] == "-t 2"
        assert _number(prometheus_port, 'gpuscope_steps_total{phase="prefill",status="ok"}') >= 4
        p50 = _number(prometheus_port, 'histogram_quantile(0.5, sum by (le) (gpuscope_step_seconds_bucket'
                                       '{phase="decode"}))')
        assert 0.0005 < p50 < 5
        assert _number(prometheus_port, 'gpuscope_memory_bytes{owner="kv",device="CPU"}') > 0
        assert _number(prometheus_port, 'gpuscope_ubatches_total{graph_reused="true"}') > 0
        assert _number(prometheus_port, 'gpuscope_syncs_total') > 0
        assert _number(prometheus_port, 'gpuscope_writer_state{state="alive"}') == 1
        assert _number(prometheus_port, 'gpuscope_ring_events_total') > 0
        assert _number(prometheus_port, 'gpuscope_ring_lost_events_total') == 0
        assert _number(prometheus_port, 'gpuscope_captures_total{reason="slow_step"}') == 1  # the rate cap
        assert _number(prometheus_port, 'gpuscope_captures_skipped_total{reason="slow_step"}') > 0

        # the dashboard's queries are PromQL this Prometheus runs, over series it has
        dashboard = json.loads((ROOT / "docs" / "grafana" / "gpuscope.json").read_text())
        answered = 0
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = re.sub(r'=~"\$\w+"', '=~".*"', target["expr"]).replace("$__rate_interval", "15s") \
                    .replace("$__range", "5m")
                url = f"http://127.0.0.1:{prometheus_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
                answer = json.loads(urllib.request.urlopen(url, timeout=5).read())
                assert answer["status"] == "success", (expr, answer)
                answered += bool(answer["data"]["result"])
        assert answered >= 10

        server.process.send_signal(signal.SIGSEGV)  # the engine crashes: its ring says so, the exporter captures
        server.process.wait(30)
        wait_for(lambda: _number(prometheus_port, 'gpuscope_captures_total{reason="crash"}') == 1, 30,
                 "the crash capture in Prometheus")
        assert _number(prometheus_port, 'gpuscope_writer_state{state="crashed"}') == 1
        crash = load_trace(next(captures.glob("server-crash-*.trace")))
        assert crash.meta["capture"]["reason"] == "crash" and crash.meta["ring"]["state"] == "crashed"
        assert Analysis(crash).health["crashed"] and len(Analysis(crash).steps) > 0
        slow = load_trace(next(captures.glob("server-slow_step-*.trace")))
        assert slow.meta["model_bytes"] and slow.meta["engine"]["ggml_ops"]  # it stands alone
    finally:
        server.close()
        for process in processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    assert exporter.returncode == 0, exporter.stderr.read()[-2000:]


def test_bench_metrics_measures_both_arms_and_the_exporter(engine_build, gemma):
    result = metrics_bench.measure(engine_build.program("llama-server"), gemma, rounds=1, requests=1, n_predict=8)
    for arm in ("without", "with"):
        assert result["arms"][arm]["decode"]["steps"] >= 7 and result["arms"][arm]["decode"]["median_ms"] > 0
    cost = result["exporter"]
    assert cost["polls"] >= 1 and cost["cpu_s"] > 0 and cost["steps_followed"] >= 8
    assert 0 < cost["share_of_a_core"] < 1 and cost["series"] > 50
