"""What a live dashboard knows: the events read from a ring so far (its own reader, its own cursor: reading does
not take events from the session's trace), and the figures derived from them."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from gpuscope.analysis.memory import buffer_lifetimes
from gpuscope.analysis.steps import step_table
from gpuscope.ring.reader import RingReader, open_when_ready
from gpuscope.trace.model import Trace

MAPPED = " (mapped file)"


# kinds that describe state rather than activity: kept whatever their age (the buffers a model allocated while
# loading are still held when a dashboard opens later)
STATE_KINDS = frozenset({"buffer", "device_info"})


class RingEvents:
    """Every event of one ring read so far. The ring file may not exist yet (a program opens it lazily): `poll()`
    keeps trying. Activity older than `since_ns` is dropped (what the ring held before the dashboard); state
    (buffers, devices) is kept. Polling only counts events per kind; records are decoded into tables when a table
    is asked for, so a dashboard that draws counters costs little between its heavier updates."""

    def __init__(self, path: str | os.PathLike, *, since_ns: int | None = None):
        self.path = Path(path)
        self.since_ns = since_ns
        self.reader: RingReader | None = None
        self._pending: list[np.ndarray] = []  # raw records not decoded yet
        self._parts: dict[str, list[pd.DataFrame]] = {}
        self._joined: dict[str, pd.DataFrame] = {}
        self.counts: dict[str, int] = {}
        self._program: str | None = None

    def poll(self) -> int:
        """Read what was committed since the last poll; returns the number of new events."""
        if self.reader is None:
            self.reader = open_when_ready(self.path)
            if self.reader is None:
                return 0
        records = self.reader.drain()
        kinds = self.reader.schema.kinds
        if self.since_ns is not None and len(records):
            state = np.isin(records["kind"], [k for k, name in kinds.items() if name in STATE_KINDS])
            records = records[state | (records["ts_ns"].astype(np.int64) >= self.since_ns)]
        if len(records):
            self._pending.append(records)
            ids, counts = np.unique(records["kind"], return_counts=True)
            for kind_id, count in zip(ids, counts):
                name = kinds.get(int(kind_id), f"unknown({int(kind_id)})")
                self.counts[name] = self.counts.get(name, 0) + int(count)
        return int(len(records))

    def _decode_pending(self) -> None:
        if not self._pending:
            return
        records = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending = []
        for kind, frame in self.reader.decode(records).items():
            self._parts.setdefault(kind, []).append(frame)
            self._joined.pop(kind, None)

    def table(self, kind: str) -> pd.DataFrame:
        """The events of `kind` so far (an empty frame with the kind's columns before the first)."""
        self._decode_pending()
        if kind not in self._parts:
            return Trace(meta={}).table(kind)
        if kind not in self._joined:
            parts = self._parts[kind]
            self._joined[kind] = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        return self._joined[kind]

    def tables(self) -> dict[str, pd.DataFrame]:
        self._decode_pending()
        return {kind: self.table(kind) for kind in self._parts}

    def status(self) -> dict:
        """The ring's accounting (lost events, the writer's state) as the dashboard shows it."""
        if self.reader is None:
            return {"state": "waiting for the ring", "written": 0, "lost": 0, "pid": None}
        status = self.reader.status
        return {"state": status.state, "written": status.written, "lost": status.lost, "pid": status.pid}

    def ring_meta(self) -> dict:
        """The ring part of a trace's metadata, for analyses of what was read so far."""
        if self.reader is None:
            return {"path": str(self.path), "opened": False}
        status, header = self.reader.status, self.reader.header
        return {"path": str(self.path), "opened": True, "capacity": header.capacity, "pid": status.pid,
                "state": status.state, "crash_signal": status.crash_signal, "written": status.written,
                "read": status.read, "lost": status.lost, "strings_dropped": status.strings_dropped,
                "writer_dropped": status.writer_dropped, "start_monotonic_ns": header.start_monotonic_ns,
                "start_realtime_ns": header.start_realtime_ns, "devices": self.reader.device_names()}

    def program(self) -> str:
        """The writer's program name (for labels), read from /proc once while it runs."""
        if self._program is None and self.reader is not None:
            try:
                self._program = Path(os.readlink(f"/proc/{self.reader.header.writer_pid}/exe")).name
            except OSError:  # gone already: a generic label
                self._program = "engine"
        return self._program or "engine"

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None


def held_now(buffer: pd.DataFrame) -> pd.DataFrame:
    """Bytes each location holds now, per owner (from the `buffer` events read so far): location, owner, bytes.
    Buffers over a mapped model file count as '<owner> (mapped file)'."""
    if not len(buffer):
        return pd.DataFrame(columns=["location", "owner", "bytes"])
    lifetimes = buffer_lifetimes(buffer)
    alive = lifetimes[lifetimes["free_ns"].isna()]
    owners = alive["owner"].astype(str).where(~alive["mapped"].astype(bool), alive["owner"].astype(str) + MAPPED)
    held = alive.assign(owner=owners).groupby(["location", "owner"], sort=True)["size"].sum()
    return held.rename("bytes").reset_index()


def hook_steps(events: RingEvents) -> pd.DataFrame:
    """Decode steps of a ring read so far, from its hook events (any engine program): step, config (the program
    and its contexts), n_tokens, context, wall_ns, complete."""
    return step_table(events.table("decode_begin"), events.table("ubatch"), events.table("decode_submitted"),
                      events.table("decode_synced"), meta={"program": events.program()})
