"""Perfetto export: a trace as Perfetto TrackEvent protobuf, for ui.perfetto.dev and trace_processor.

Layout (one process track per engine process, by pid):
  thread <tid>              decode steps as slices (decode_begin to decode_synced, or to decode_submitted when the
                            program never synchronized), scheduler splits nested in them; FA plans, allocator
                            reallocations / buffer resizes and marks as instant events with their fields as arguments
    syncs <tid>             (under the thread) syncs as slices named `sync: <reason>`: an input-copy sync can start
                            just before the split that waits for it, so they cannot nest in the splits
  device <name>             cross-device copies: a slice on the source device and one on the destination, joined
                            by a flow
  <device> allocated bytes  counter: bytes of the device's live backend buffers (alloc +size, free -size)
  <device> stream <n>       GPU kernels, copies and sets from the `kernels` table, one track per stream
Timestamps are the trace's own (CLOCK_MONOTONIC ns). Every field of an event becomes a debug annotation (`args.*`
in trace_processor). Slices that end after the slice they start in are cut at its end (arg `clipped`), so every
track nests properly.

The protobuf classes come from the `perfetto` package (pip install perfetto); `load_trace_processor` opens a
written file with the package's TraceProcessor on a local trace_processor_shell binary and never downloads one.
"""
from __future__ import annotations

import base64
import html
import io
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gpuscope.errors import CollectorUnavailableError
from gpuscope.trace.model import Trace, load_trace
from gpuscope.units import size

# columns that place an event rather than describe it
_PLACEMENT = {"seq", "ts_ns", "tid", "device", "process", "pid", "config", "in_step", "run"}
_SEQUENCE_ID = 1
# order of records at one timestamp: ends first (deepest first), then instants and counters, then begins
_END, _POINT, _BEGIN = 0, 1, 2


def _protos():
    try:  # the perfetto package is optional: only exports need it
        from perfetto.protos.perfetto.trace import perfetto_trace_pb2
    except ImportError:
        raise CollectorUnavailableError("the Perfetto export needs the `perfetto` package: pip install perfetto") \
            from None
    return perfetto_trace_pb2


@dataclass
class _Slice:
    track: tuple
    start: int
    end: int
    name: str
    args: dict
    depth: int = 0
    flow_out: int | None = None
    flow_in: int | None = None


@dataclass
class _Tracks:
    """Track uuids, descriptors, and the events of each track before they are written."""
    descriptors: dict = field(default_factory=dict)  # key -> (uuid, parent key, kind, payload)
    slices: list = field(default_factory=list)
    instants: list = field(default_factory=list)  # (track, ts, name, args)
    counters: list = field(default_factory=list)  # (track, ts, value)

    def add(self, key: tuple, parent: tuple | None, kind: str, payload: dict) -> tuple:
        if key not in self.descriptors:
            self.descriptors[key] = (len(self.descriptors) + 1, parent, kind, payload)
        return key


def _pid_of(frame: pd.DataFrame, default_pid: int) -> np.ndarray:
    if "pid" in frame.columns:
        return frame["pid"].fillna(default_pid).to_numpy(np.int64)
    return np.full(len(frame), default_pid, np.int64)


def _value(value):
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _args(frame: pd.DataFrame) -> list[dict]:
    columns = [c for c in frame.columns if c not in _PLACEMENT]
    records = frame[columns].to_dict("records")
    return [{key: _value(value) for key, value in record.items() if _value(value) is not None}
            for record in records]


class _Builder:
    def __init__(self, trace: Trace):
        self.trace = trace
        self.tracks = _Tracks()
        ring = trace.meta.get("ring") or {}
        self.default_pid = int(ring.get("pid") or 0)
        self.process_names = {int(p.get("pid") or 0): name for name, p in (trace.meta.get("processes") or {}).items()}
        self.end_of_trace = max((int(f["ts_ns"].max()) for f in trace.tables.values()
                                 if len(f) and "ts_ns" in f.columns), default=0)
        self.flows = 0

    # -- tracks ----------------------------------------------------------------------------------------------

    def process(self, pid: int) -> tuple:
        label = self.process_names.get(pid)
        name = f"engine {label} (pid {pid})" if label else f"engine (pid {pid})"
        return self.tracks.add(("process", pid), None, "process", {"pid": pid, "name": name})

    def thread(self, pid: int, tid: int) -> tuple:
        parent = self.process(pid)
        return self.tracks.add(("thread", pid, tid), parent, "thread", {"pid": pid, "tid": tid,
                                                                        "name": f"thread {tid}"})

    def syncs(self, pid: int, tid: int) -> tuple:
        parent = self.thread(pid, tid)
        return self.tracks.add(("syncs", pid, tid), parent, "plain", {"name": f"syncs {tid}"})

    def device(self, pid: int, device: str) -> tuple:
        parent = self.process(pid)
        return self.tracks.add(("device", pid, device), parent, "plain", {"name": f"device {device}"})

    def counter(self, pid: int, device: str) -> tuple:
        parent = self.process(pid)
        return self.tracks.add(("allocated", pid, device), parent, "counter",
                               {"name": f"{device} allocated bytes"})

    def stream(self, pid: int, device: str, stream: int) -> tuple:
        parent = self.device(pid, device)
        return self.tracks.add(("stream", pid, device, stream), parent, "plain",
                               {"name": f"{device} stream {stream}"})

    # -- content ---------------------------------------------------------------------------------------------

    def table(self, kind: str) -> pd.DataFrame:
        return self.trace.tables.get(kind, pd.DataFrame())

    def build(self) -> _Tracks:
        self._steps()
        self._duration_slices("split_end", self.thread, depth=1,
                              name=lambda r: f"split {r['split_id']} {r.get('backend', '')}")
        # a sync may start just before the split that waits for it: syncs get their own track under the thread
        self._duration_slices("sync", self.syncs, depth=0, name=lambda r: f"sync: {r.get('reason', 'unknown')}")
        self._instants("fa_plan", lambda r: f"FA plan: {r.get('kernel', '?')} ({r.get('caller', '?')})")
        self._instants("gallocr_realloc", lambda r: f"realloc: {r.get('reason', '?')}")
        self._instants("gallocr_buffer", lambda r: f"allocator buffer {r.get('old_size', 0)} -> "
                                                   f"{r.get('new_size', 0)} bytes")
        self._instants("mark", lambda r: f"mark: {r.get('name', '')}")
        self._copies()
        self._allocated()
        self._kernels()
        return self.tracks

    def _steps(self) -> None:
        begins = self.table("decode_begin")
        if not len(begins):
            return
        pids = _pid_of(begins, self.default_pid)
        ends: dict[tuple, int] = {}
        for kind in ("decode_submitted", "decode_synced"):  # synced overrides submitted
            frame = self.table(kind)
            for pid, step, ts in zip(_pid_of(frame, self.default_pid), frame.get("step", []), frame.get("ts_ns", [])):
                ends[(int(pid), int(step))] = int(ts)
        for pid, args, row in zip(pids, _args(begins), begins[["ts_ns", "tid", "step"]].itertuples(index=False)):
            start = int(row.ts_ns)
            end = ends.get((int(pid), int(row.step)))
            if end is None:
                args["never_returned"] = True
                end = max(self.end_of_trace, start)
            self.tracks.slices.append(_Slice(self.thread(int(pid), int(row.tid)), start, end,
                                             f"decode step {int(row.step)}", args, depth=0))

    def _duration_slices(self, kind: str, track, depth: int, name) -> None:
        frame = self.table(kind)
        if not len(frame):
            return
        for pid, args, row in zip(_pid_of(frame, self.default_pid), _args(frame),
                                  frame[["ts_ns", "tid", "duration_ns"]].itertuples(index=False)):
            end = int(row.ts_ns)
            self.tracks.slices.append(_Slice(track(int(pid), int(row.tid)), end - int(row.duration_ns), end,
                                             name(args), args, depth=depth))

    def _instants(self, kind: str, name) -> None:
        frame = self.table(kind)
        if not len(frame):
            return
        devices = frame["device"].astype(object).where(frame["device"].notna(), None) \
            if "device" in frame.columns else [None] * len(frame)
        for pid, args, device, row in zip(_pid_of(frame, self.default_pid), _args(frame), devices,
                                          frame[["ts_ns", "tid"]].itertuples(index=False)):
            if device is not None:
                args["device"] = str(device)
            self.tracks.instants.append((self.thread(int(pid), int(row.tid)), int(row.ts_ns), name(args), args))

    def _copies(self) -> None:
        frame = self.table("copy")
        if not len(frame):
            return
        for pid, args, row in zip(_pid_of(frame, self.default_pid), _args(frame),
                                  frame[["ts_ns", "duration_ns"]].itertuples(index=False)):
            end = int(row.ts_ns)
            start = end - int(row.duration_ns)
            source, destination = str(args.get("src_device", "?")), str(args.get("dst_device", "?"))
            self.flows += 1
            tensor = args.get("tensor", "")
            self.tracks.slices.append(_Slice(self.device(int(pid), source), start, end, f"copy out: {tensor}", args,
                                             depth=1, flow_out=self.flows))
            self.tracks.slices.append(_Slice(self.device(int(pid), destination), start, end, f"copy in: {tensor}",
                                             args, depth=1, flow_in=self.flows))

    def _allocated(self) -> None:
        frame = self.table("buffer")
        if not len(frame):
            return
        frame = frame.assign(owner_pid=_pid_of(frame, self.default_pid)).sort_values(["owner_pid", "seq"], kind="stable")
        live: dict[tuple, int] = {}
        totals: dict[tuple, int] = {}
        for row in frame[["owner_pid", "ts_ns", "device", "buffer", "size", "action"]].itertuples(index=False):
            action = str(row.action)
            if action not in ("alloc", "free"):
                continue
            pid, device = int(row.owner_pid), str(row.device)
            key = (pid, int(row.buffer))
            if action == "alloc":
                live[key] = int(row.size)
                change = int(row.size)
            else:
                change = -live.pop(key, int(row.size))
            totals[(pid, device)] = totals.get((pid, device), 0) + change
            self.tracks.counters.append((self.counter(pid, device), int(row.ts_ns), totals[(pid, device)]))

    def _kernels(self) -> None:
        frame = self.table("kernels")
        if not len(frame):
            return
        pids = _pid_of(frame, self.default_pid)
        for pid, args, row in zip(pids, _args(frame), frame[["ts_ns", "duration_ns", "device", "stream", "kernel"]]
                                  .itertuples(index=False)):
            start = int(row.ts_ns)
            self.tracks.slices.append(_Slice(self.stream(int(pid), str(row.device), int(row.stream)), start,
                                             start + int(row.duration_ns), str(row.kernel), args, depth=0))


def _nest(slices: list[_Slice]) -> None:
    """Cut slices that end after the enclosing slice on their track (Perfetto needs strict nesting per track)."""
    by_track: dict[tuple, list[_Slice]] = {}
    for item in slices:
        by_track.setdefault(item.track, []).append(item)
    for items in by_track.values():
        items.sort(key=lambda s: (s.start, -s.end, s.depth))
        stack: list[_Slice] = []
        for item in items:
            while stack and stack[-1].end <= item.start:
                stack.pop()
            if stack and item.end > stack[-1].end:
                item.end = stack[-1].end
                item.args["clipped"] = True
            stack.append(item)


def _annotate(event, args: dict) -> None:
    for key, value in args.items():
        annotation = event.debug_annotations.add()
        annotation.name = str(key)
        if isinstance(value, bool):
            annotation.bool_value = value
        elif isinstance(value, int):
            if value > 2 ** 63 - 1:
                annotation.uint_value = value
            else:
                annotation.int_value = value
        elif isinstance(value, float):
            annotation.double_value = value
        else:
            annotation.string_value = str(value)


def export_perfetto(trace: Trace, out: str | os.PathLike) -> dict:
    """Write `trace` as a Perfetto protobuf trace; returns counts of what was written (tracks, slices, ...)."""
    data, counts = perfetto_bytes(trace)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return {**counts, "path": str(out)}


def perfetto_bytes(trace: Trace) -> tuple[bytes, dict]:
    """`trace` as the bytes of a Perfetto protobuf trace, and counts of what they hold (tracks, slices, ...)."""
    pb = _protos()
    tracks = _Builder(trace).build()
    _nest(tracks.slices)
    records = []  # (ts, phase, tie-break, writer)
    for item in tracks.slices:
        records.append((item.start, _BEGIN, item.depth, "begin", item))
        records.append((item.end, _END, -item.depth, "end", item))
    for track, ts, name, args in tracks.instants:
        records.append((ts, _POINT, 0, "instant", (track, name, args)))
    for track, ts, value in tracks.counters:
        records.append((ts, _POINT, 0, "counter", (track, value)))
    records.sort(key=lambda r: (r[0], r[1], r[2]))

    uuids = {key: uuid for key, (uuid, _, _, _) in tracks.descriptors.items()}
    with io.BytesIO() as stream:
        def write(packet) -> None:
            body = packet.SerializeToString()
            # a Trace message is repeated field 1 (TracePacket): tag, length, bytes
            stream.write(b"\x0a" + _varint(len(body)) + body)

        first = True
        for key, (uuid, parent, kind, payload) in tracks.descriptors.items():
            packet = pb.TracePacket()
            packet.trusted_packet_sequence_id = _SEQUENCE_ID
            if first:
                packet.sequence_flags = pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
                first = False
            descriptor = packet.track_descriptor
            descriptor.uuid = uuid
            if parent is not None:
                descriptor.parent_uuid = uuids[parent]
            if kind == "process":
                descriptor.process.pid = payload["pid"]
                descriptor.process.process_name = payload["name"]
            elif kind == "thread":
                descriptor.thread.pid = payload["pid"]
                descriptor.thread.tid = payload["tid"]
                descriptor.thread.thread_name = payload["name"]
            else:
                descriptor.name = payload["name"]
                if kind == "counter":
                    descriptor.counter.unit = pb.CounterDescriptor.UNIT_SIZE_BYTES
            write(packet)
        for ts, _, _, what, item in records:
            packet = pb.TracePacket()
            packet.trusted_packet_sequence_id = _SEQUENCE_ID
            packet.timestamp = max(int(ts), 0)
            event = packet.track_event
            if what == "begin":
                event.type = pb.TrackEvent.TYPE_SLICE_BEGIN
                event.track_uuid = uuids[item.track]
                event.name = item.name
                _annotate(event, item.args)
                if item.flow_out is not None:
                    event.flow_ids.append(item.flow_out)
                if item.flow_in is not None:
                    event.terminating_flow_ids.append(item.flow_in)
            elif what == "end":
                event.type = pb.TrackEvent.TYPE_SLICE_END
                event.track_uuid = uuids[item.track]
            elif what == "instant":
                track, name, args = item
                event.type = pb.TrackEvent.TYPE_INSTANT
                event.track_uuid = uuids[track]
                event.name = name
                _annotate(event, args)
            else:
                track, value = item
                event.type = pb.TrackEvent.TYPE_COUNTER
                event.track_uuid = uuids[track]
                event.counter_value = int(value)
            write(packet)
        data = stream.getvalue()
    return data, {"tracks": len(tracks.descriptors), "slices": len(tracks.slices), "instants": len(tracks.instants),
                  "counter_values": len(tracks.counters),
                  "flows": sum(1 for s in tracks.slices if s.flow_out is not None),
                  "clipped": sum(1 for s in tracks.slices if s.args.get("clipped"))}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# -- reading it back ---------------------------------------------------------------------------------------------

def read_packets(path: str | os.PathLike):
    """The TracePackets of a Perfetto protobuf trace file (parsed with the perfetto package's protos)."""
    pb = _protos()
    trace = pb.Trace()
    trace.ParseFromString(Path(path).read_bytes())
    return list(trace.packet)


def trace_processor_binary() -> str | None:
    """A local trace_processor_shell: $GPUSCOPE_TRACE_PROCESSOR, or one on PATH. None when there is none."""
    candidate = os.environ.get("GPUSCOPE_TRACE_PROCESSOR") or shutil.which("trace_processor_shell") \
        or shutil.which("trace_processor")
    return candidate if candidate and os.access(candidate, os.X_OK) else None


def load_trace_processor(path: str | os.PathLike):
    """The perfetto package's TraceProcessor over `path`, on a local binary (it is never downloaded)."""
    binary = trace_processor_binary()
    if binary is None:
        raise CollectorUnavailableError(
            "no local trace_processor_shell: set $GPUSCOPE_TRACE_PROCESSOR to one (gpuscope never lets the perfetto "
            "package download it), or open the file in ui.perfetto.dev")
    from perfetto.trace_processor import TraceProcessor, TraceProcessorConfig  # optional, as above

    return TraceProcessor(trace=str(path), config=TraceProcessorConfig(bin_path=binary))


# slices per track; a thread's own track is named by its thread (the descriptor's thread_name)
TRACK_COUNTS_SQL = """
select coalesce(track.name, thread.name) as track, count(slice.id) as slices
from slice join track on slice.track_id = track.id
left join thread_track on thread_track.id = track.id
left join thread using (utid)
group by track.id order by track
"""


# -- opening it in ui.perfetto.dev ---------------------------------------------------------------------------------

# an export up to this size rides inside a page as a data: link (a third larger as base64); a larger one is written
# as a file beside it (the two-GPU tensor split with its 57,410 kernels exports 33 MiB)
EMBED_LIMIT = 8 << 20
SUFFIX = ".pftrace"
HOW_TO_OPEN = ("open https://ui.perfetto.dev in a browser, choose \"Open trace file\" and pick the file "
               "(the UI reads it in the browser; nothing is uploaded)")


def download_html(file_name: str, *, data: bytes | None = None, href: str | None = None,
                  size_text: str = "") -> str:
    """An "open in Perfetto" block: a link that downloads the export (its bytes inside the link, or the file at
    href, relative to the page) and how to open it. Every name is escaped."""
    target = f"data:application/octet-stream;base64,{base64.b64encode(data).decode()}" if data is not None else href
    what = html.escape(file_name) + (f" ({html.escape(size_text)})" if size_text else "")
    return (f"<p><b>Open in Perfetto:</b> <a class='perfetto-download' download='{html.escape(file_name)}' "
            f"href='{html.escape(target or '')}'>download {what}</a>, then {html.escape(HOW_TO_OPEN)}.</p>")


@dataclass
class PerfettoFile:
    """A Perfetto export written to open in ui.perfetto.dev; in a notebook it shows a download link and how to
    open it."""
    path: Path
    counts: dict

    def _repr_html_(self) -> str:
        data = self.path.read_bytes() if self.path.stat().st_size <= EMBED_LIMIT else None
        href = None
        if data is None:  # too large to ride in the notebook: a link to the file, relative to the kernel's folder
            href = os.path.relpath(self.path.resolve(), Path.cwd()) if self.path.is_absolute() else str(self.path)
        return download_html(self.path.name, data=data, href=href, size_text=size(self.path.stat().st_size))

    def __repr__(self) -> str:
        return f"{self.path} ({size(self.path.stat().st_size)}): {HOW_TO_OPEN}"


def perfetto_link(trace, out: str | os.PathLike | None = None) -> PerfettoFile:
    """Export a trace (a Trace, an Analysis, or a trace folder's path) for ui.perfetto.dev: to `out`, by default
    beside the trace folder (run.trace -> run.pftrace), or trace.pftrace in the working folder for a trace in
    memory. In a notebook the result shows a download link and how to open the file."""
    trace = getattr(trace, "trace", trace)  # an Analysis holds its Trace
    if not isinstance(trace, Trace):
        trace = load_trace(trace)
    if out is None:
        out = Path(trace.path).with_suffix(SUFFIX) if trace.path else Path.cwd() / f"trace{SUFFIX}"
    counts = export_perfetto(trace, out)
    return PerfettoFile(Path(counts["path"]), counts)
