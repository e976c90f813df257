"""Perfetto export of REAL traces: a session over two local RPC devices (three engine processes, cross-device
copies) and a `gpuscope record` run of llama-bench, both with the patched CPU engine and the tiny synthetic model.
The written file is read back with the perfetto package's own protos (and with trace_processor when a local
binary is available) and its counts per track are checked against the trace's tables."""
from __future__ import annotations

import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from gpuscope.export.perfetto import (TRACK_COUNTS_SQL, export_perfetto, load_trace_processor, read_packets,
                                          trace_processor_binary)
from gpuscope.collectors.rocprof import read_rocprof
from gpuscope.session import SplitConfig, open_session
from gpuscope.session.workloads import sweep_loop
from gpuscope.trace.model import load_trace, save_trace


pytest.importorskip("perfetto")
DATA = Path(__file__).parent / "data" / "rocprofv3"


@pytest.fixture(scope="module")
def rpc_trace(engine_build, tiny_model, tmp_path_factory):
    session = open_session(tiny_model, SplitConfig(devices=["rpc:0", "rpc:1"], n_ctx=256), engine=engine_build,
                      isolate=True)
    try:
        session.run(sweep_loop, [0, 64], 4)
    finally:
        session.close()
    return save_trace(session.trace(), tmp_path_factory.mktemp("rpc") / "rpc.trace")


@pytest.fixture(scope="module")
def bench_trace(engine_build, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.trace"
    done = subprocess.run([sys.executable, "-m", "gpuscope.cli", "record", "--out", str(out), "--",
                           str(engine_build.program("llama-bench")), "-m", str(tiny_model), "-p", "16", "-n", "8",
                           "-r", "1", "-t", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def _read(path: Path):
    """Per track name: Counter of (event type, name prefix); plus flows, and a check that slices nest."""
    packets = read_packets(path)
    names, per_track = {}, defaultdict(Counter)
    flows_out, flows_in = [], []
    open_slices = defaultdict(list)
    last_ts = 0
    for packet in packets:
        if packet.HasField("track_descriptor"):
            d = packet.track_descriptor
            names[d.uuid] = d.name or d.thread.thread_name or d.process.process_name
            continue
        event = packet.track_event
        assert packet.timestamp >= last_ts, "packets in time order"
        last_ts = packet.timestamp
        track = names[event.track_uuid]
        kind = event.type
        if kind == 1:  # slice begin
            prefix = event.name.split(":")[0].split(" ")[0]
            per_track[track][("slice", prefix)] += 1
            open_slices[track].append(packet.timestamp)
            flows_out += list(event.flow_ids)
            flows_in += list(event.terminating_flow_ids)
        elif kind == 2:
            assert open_slices[track], f"an end without a begin on {track}"
            assert open_slices[track].pop() <= packet.timestamp
        elif kind == 3:
            per_track[track][("instant", event.name.split(":")[0].split(" ")[0])] += 1
        elif kind == 4:
            per_track[track][("counter", "")] += 1
    assert not any(open_slices.values()), "every slice ends"
    return per_track, flows_out, flows_in


def _expected_thread_counts(trace) -> Counter:
    expected = Counter()
    for kind, track, key in (("decode_begin", "thread", ("slice", "decode")), ("split_end", "thread", ("slice", "split")),
                             ("sync", "syncs", ("slice", "sync")), ("fa_plan", "thread", ("instant", "FA")),
                             ("gallocr_realloc", "thread", ("instant", "realloc")),
                             ("gallocr_buffer", "thread", ("instant", "allocator")),
                             ("mark", "thread", ("instant", "mark"))):
        frame = trace.tables.get(kind)
        if frame is not None:
            for tid, count in frame["tid"].value_counts().items():
                expected[(f"{track} {tid}", key)] += count
    return expected


def _actual_thread_counts(per_track) -> Counter:
    return Counter({(track, key): n for track, counts in per_track.items()
                    if track.startswith("thread ") or track.startswith("syncs ") for key, n in counts.items()})


def test_rpc_session_export_matches_its_tables(rpc_trace, tmp_path):
    trace = load_trace(rpc_trace)
    assert len(trace.tables["copy"]) and trace.tables["sync"]["pid"].nunique() >= 1
    written = export_perfetto(trace, tmp_path / "rpc.pftrace")
    per_track, flows_out, flows_in = _read(tmp_path / "rpc.pftrace")
    assert _actual_thread_counts(per_track) == _expected_thread_counts(trace)
    # copies: one slice on the source device, one on the destination, joined by a flow
    copies = trace.tables["copy"]
    for device, count in copies["src_device"].astype(str).value_counts().items():
        assert per_track[f"device {device}"][("slice", "copy")] >= count
    total = sum(n for track, counts in per_track.items() if track.startswith("device ")
                for key, n in counts.items() if key == ("slice", "copy"))
    assert total == 2 * len(copies)
    assert sorted(flows_out) == sorted(flows_in) and len(flows_out) == len(copies) == written["flows"]
    # allocated bytes: one counter value per buffer alloc / free, per device (several processes share names)
    buffers = trace.tables["buffer"]
    changes = buffers[buffers["action"].astype(str).isin(["alloc", "free"])]
    counted = Counter()
    for track, counts in per_track.items():
        if track.endswith(" allocated bytes"):
            counted[track.removesuffix(" allocated bytes")] += counts[("counter", "")]
    assert counted == Counter(changes["device"].astype(str).value_counts().to_dict())
    assert written["clipped"] == 0, "the engine's own slices nest without cutting"


def test_record_trace_with_kernels_exports_kernel_tracks(bench_trace, tmp_path):
    trace = load_trace(bench_trace)
    trace.tables["kernels"] = read_rocprof(DATA / "1234_kernel_trace.csv")
    out = tmp_path / "bench-kernels.trace"
    save_trace(trace, out)
    done = subprocess.run([sys.executable, "-m", "gpuscope.cli", "export", str(out), "--perfetto",
                           str(tmp_path / "bench.pftrace")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    per_track, _, _ = _read(tmp_path / "bench.pftrace")
    assert _actual_thread_counts(per_track) == _expected_thread_counts(trace)
    kernels = trace.tables["kernels"]
    for (device, stream), count in kernels.groupby(["device", "stream"]).size().items():
        assert sum(per_track[f"{device} stream {stream}"].values()) == count


def test_trace_processor_loads_the_export(rpc_trace, tmp_path):
    if trace_processor_binary() is None:
        pytest.skip("no local trace_processor_shell ($GPUSCOPE_TRACE_PROCESSOR): the perfetto package would "
                    "download one, which gpuscope never lets it do")
    trace = load_trace(rpc_trace)
    export_perfetto(trace, tmp_path / "rpc.pftrace")
    processor = load_trace_processor(tmp_path / "rpc.pftrace")
    try:
        counts = {row.track: row.slices for row in processor.query(TRACK_COUNTS_SQL)}
    finally:
        processor.close()
    expected = _expected_thread_counts(trace)
    for tid in trace.tables["decode_begin"]["tid"].unique():
        slices = sum(n for (track, key), n in expected.items() if track == f"thread {tid}" and key[0] == "slice")
        assert counts[f"thread {tid}"] == slices
