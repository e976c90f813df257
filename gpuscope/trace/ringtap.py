"""Tapping one ring: drain what a program's hooks commit, keep it, and turn it into trace tables.

Used by `gpuscope record`, by the recovery of rings a killed recorder left behind, and by sessions.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np

from gpuscope.ring.reader import RingReader, open_when_ready


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def ring_dir() -> Path:
    return Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(os.environ.get("TMPDIR", "/tmp"))


class RingCollector:
    """Drains one ring that a program creates lazily: waits for the file, keeps every committed record.

    `reader`: an already open reader of the ring (recovery opens it first, to report a bad ring by name)."""

    def __init__(self, path: Path, reader: RingReader | None = None):
        self.path = path
        self.reader = reader
        self.batches: list[np.ndarray] = []

    def poll(self) -> int:
        """Drain what is there now; returns the records taken."""
        if self.reader is None:
            self.reader = open_when_ready(self.path)
            if self.reader is None:
                return 0
        batch = self.reader.drain()
        if batch.size:
            self.batches.append(batch)
        return int(batch.size)

    def skip_existing(self) -> None:
        """Drop what the ring already holds: a session's trace starts when the session opens."""
        self.poll()
        self.batches.clear()

    def snapshot(self, drain: bool = True) -> tuple[dict, dict]:
        """Drain (unless not to: a ring that cannot be read any more), then (tables, ring metadata) of everything
        kept so far; the writer may still be running."""
        if drain:
            self.poll()
        if self.reader is None:
            return {}, {"path": str(self.path), "opened": False}
        records = np.concatenate(self.batches) if self.batches else np.empty(0, self.reader.schema.record_dtype)
        status, header = self.reader.status, self.reader.header
        return self.reader.decode(records), {
            "path": str(self.path), "opened": True, "capacity": header.capacity, "pid": status.pid,
            "state": status.state, "crash_signal": status.crash_signal,
            "crash_signal_name": signal_name(status.crash_signal) if status.crash_signal else None,
            "written": status.written, "read": status.read, "lost": status.lost,
            "strings_dropped": status.strings_dropped, "writer_dropped": status.writer_dropped,
            "start_monotonic_ns": header.start_monotonic_ns, "start_realtime_ns": header.start_realtime_ns,
            "devices": self.reader.device_names(), "unknown_kinds": self.reader.unknown_kinds,
        }

    def finish(self, drain: bool = True) -> tuple[dict, dict]:
        """Final drain after the writer is gone: (tables, ring metadata); closes the reader."""
        tables, ring_meta = self.snapshot(drain)
        if self.reader is not None:
            self.reader.close()
        return tables, ring_meta
