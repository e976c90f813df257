"""Tapping one ring: drain what a program's hooks commit, keep it, and turn it into trace tables.

One tap serves every reader that keeps what it reads: `gpuscope record`, the recovery of rings a killed recorder
left behind, sessions, and the live dashboard (with its own tap, so its cursor takes nothing from a session's).
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd

from gpuscope.ring.reader import RingReader, open_when_ready
from gpuscope.trace.model import Trace

# kinds that describe state rather than activity: kept whatever their age (the buffers a model allocated while
# loading are still held when a dashboard opens later)
STATE_KINDS = frozenset({"buffer", "device_info"})


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def ring_dir() -> Path:
    return Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(os.environ.get("TMPDIR", "/tmp"))


class RingTap:
    """Every committed record of one ring read so far. The ring file may not exist yet (a program creates it
    lazily): `poll()` keeps trying. Polling keeps the raw records and counts them per kind; they are decoded when
    tables are asked for, each record once, so a frequent poll costs little.

    `reader`: an already open reader of the ring (recovery opens it first, to report a bad ring by name).
    `since_ns`: activity older than this is dropped (what the ring held before a dashboard opened); state (buffers,
    devices) is kept."""

    def __init__(self, path: str | os.PathLike, reader: RingReader | None = None, *, since_ns: int | None = None):
        self.path = Path(path)
        self.reader = reader
        self.since_ns = since_ns
        self.counts: dict[str, int] = {}  # records kept per kind name
        self._pending: list[np.ndarray] = []  # raw records not decoded yet
        self._tables: dict[str, pd.DataFrame] = {}

    def poll(self) -> int:
        """Drain what was committed since the last poll; returns the records kept."""
        if self.reader is None:
            self.reader = open_when_ready(self.path)
            if self.reader is None:
                return 0
        records = self.reader.drain()
        kinds = self.reader.schema.kinds
        if self.since_ns is not None and records.size:
            state = np.isin(records["kind"], [k for k, name in kinds.items() if name in STATE_KINDS])
            records = records[state | (records["ts_ns"].astype(np.int64) >= self.since_ns)]
        if records.size:
            self._pending.append(records)
            ids, counts = np.unique(records["kind"], return_counts=True)
            for kind_id, count in zip(ids, counts):
                name = kinds.get(int(kind_id), f"unknown({int(kind_id)})")
                self.counts[name] = self.counts.get(name, 0) + int(count)
        return int(records.size)

    def skip_existing(self) -> None:
        """Drop what the ring already holds: a session's trace starts when the session opens."""
        self.poll()
        self._pending.clear()
        self._tables.clear()
        self.counts.clear()

    def tables(self) -> dict[str, pd.DataFrame]:
        """The events of every kind read so far, one table per kind."""
        if self._pending:
            records = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending = []
            for kind, frame in self.reader.decode(records).items():
                self._tables[kind] = _appended(self._tables[kind], frame) if kind in self._tables else frame
        return dict(self._tables)

    def table(self, kind: str) -> pd.DataFrame:
        """The events of `kind` so far (an empty frame with the kind's columns before the first)."""
        tables = self.tables()
        return tables[kind] if kind in tables else Trace(meta={}).table(kind)

    def ring_meta(self) -> dict:
        """The ring part of a trace's metadata: its accounting now (the writer may still be running)."""
        if self.reader is None:
            return {"path": str(self.path), "opened": False}
        return ring_meta(self.reader)

    def snapshot(self, drain: bool = True) -> tuple[dict, dict]:
        """Drain (unless not to: a ring that cannot be read any more), then (tables, ring metadata) of everything
        kept so far; the writer may still be running."""
        if drain:
            self.poll()
        tables = self.tables()  # first: decoding counts the unknown kinds the metadata reports
        return tables, self.ring_meta()

    def finish(self, drain: bool = True) -> tuple[dict, dict]:
        """Final drain after the writer is gone: (tables, ring metadata); closes the reader."""
        tables, ring_meta = self.snapshot(drain)
        self.close()
        return tables, ring_meta

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


def ring_meta(reader: RingReader) -> dict:
    """The ring part of a trace's metadata from an open reader: header, the writer's fate, the accounting now."""
    status, header = reader.status, reader.header
    return {
        "path": str(reader.path), "opened": True, "capacity": header.capacity, "pid": status.pid,
        "state": status.state, "crash_signal": status.crash_signal,
        "crash_signal_name": signal_name(status.crash_signal) if status.crash_signal else None,
        "written": status.written, "read": status.read, "lost": status.lost,
        "strings_dropped": status.strings_dropped, "writer_dropped": status.writer_dropped,
        "start_monotonic_ns": header.start_monotonic_ns, "start_realtime_ns": header.start_realtime_ns,
        "devices": reader.device_names(), "unknown_kinds": reader.unknown_kinds,
        "clock": header.clock, "position": status.position,
    }


def _appended(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """`old` then `new`, as one decode of both would make them: a categorical column keeps its categories in order
    of first appearance (a plain concat turns categoricals of different categories into objects)."""
    columns = {}
    for name in new.columns:
        before, after = old[name], new[name]
        if isinstance(after.dtype, pd.CategoricalDtype):
            categories = before.cat.categories.append(after.cat.categories).unique()
            before, after = before.cat.set_categories(categories), after.cat.set_categories(categories)
        columns[name] = pd.concat([before, after], ignore_index=True)
    return pd.DataFrame(columns)
