"""Captures on demand: when a condition fires on a ring (a FlashAttention selection with no kernel, re-plans in
every step, a step over the threshold, the writer's crash), the last seconds of that ring are written as a trace
(the normal format: gpuscope.load_trace, the doctor, the report read it), so the continuous tier hands a full trace
to the notebook tier.

The ring keeps the records, not the exporter: a ring is a flight recorder, but its oldest records are overwritten
and it is removed when its writer exits, so the exporter keeps the raw records of the last `seconds` itself (64
bytes each, at most `MAX_RECORDS`), plus the buffers and devices of the whole run (state, whatever its age).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpuscope.errors import GpuscopeError
from gpuscope.ring.reader import RingReader
from gpuscope.trace.model import Trace, save_trace
from gpuscope.trace.recover import check_trace_path
from gpuscope.trace.ringtap import STATE_KINDS, ring_meta
from gpuscope.version import __version__

MAX_RECORDS = 1 << 20  # 64 MiB of raw records per ring at most: at 100k events/s that is the last 10 s
MAX_STATE_RECORDS = 1 << 16
REASONS = ("fa_no_kernel", "replans_every_step", "slow_step", "crash")


class CaptureError(GpuscopeError):
    """Captures cannot be written where they were asked for."""


@dataclass(frozen=True)
class CapturePolicy:
    """When and where captures are written. `folder`: where; `seconds`: how much of the ring each holds;
    `every_s`: at most one capture per ring and reason this often (the others are counted as skipped);
    `step_ms`: a step slower than this fires `slow_step` (None: never); `reasons`: the conditions that capture."""
    folder: Path
    seconds: float = 30.0
    every_s: float = 60.0
    step_ms: float | None = None
    reasons: tuple[str, ...] = REASONS

    def __post_init__(self) -> None:
        unknown = set(self.reasons) - set(REASONS)
        if unknown:
            raise CaptureError(f"unknown capture condition {sorted(unknown)[0]!r}; known: {', '.join(REASONS)}")
        if self.seconds <= 0 or self.every_s < 0:
            raise CaptureError("capture seconds must be positive and the interval between captures not negative")
        check_trace_path(self.folder / "capture.trace")  # the folder made, and writable, before any ring is read


class RecordWindow:
    """The raw records of one ring's last `seconds` (by the writer's clock), and its state records of all time."""

    def __init__(self, reader: RingReader, seconds: float):
        self.seconds = seconds
        kinds = reader.schema.kinds
        self._state_ids = np.array([k for k, name in kinds.items() if name in STATE_KINDS])
        self._recent: list[np.ndarray] = []
        self._state: list[np.ndarray] = []

    def add(self, records: np.ndarray) -> None:
        if not records.size:
            return
        state = np.isin(records["kind"], self._state_ids)
        if state.any():
            self._state.append(records[state])
            self._state = _last(self._state, MAX_STATE_RECORDS)
        self._recent.append(records[~state])
        newest = int(records["ts_ns"].max())
        horizon = newest - int(self.seconds * 1e9)
        while self._recent and (not self._recent[0].size or int(self._recent[0]["ts_ns"].max()) < horizon):
            self._recent.pop(0)
        self._recent = _last(self._recent, MAX_RECORDS)

    def records(self) -> np.ndarray:
        """State, then the recent records from `seconds` before the newest on, in the order the reader took them."""
        parts = self._state + self._recent
        if not parts:
            return np.empty(0)
        records = np.concatenate(parts)
        newest = int(records["ts_ns"].max())
        keep = np.isin(records["kind"], self._state_ids) | (records["ts_ns"].astype(np.int64) >=
                                                              newest - int(self.seconds * 1e9))
        records = records[keep]
        return records[np.argsort(records["seq"], kind="stable")]


def _last(parts: list[np.ndarray], limit: int) -> list[np.ndarray]:
    """The newest `limit` records of `parts` (a list of arrays, oldest first)."""
    total = sum(part.size for part in parts)
    while parts and total - parts[0].size >= limit:
        total -= parts.pop(0).size
    if total > limit:
        parts[0] = parts[0][total - limit:]
    return parts


def write_capture(policy: CapturePolicy, reader: RingReader, window: RecordWindow, *, ring_name: str,
                  reason: str, detail: str, meta: dict) -> Path:
    """The window as a trace in the capture folder: `<ring>-<reason>-<UTC time>.trace`; its path."""
    records = window.records()
    tables = reader.decode(records) if records.size else {}
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    safe_name = re.sub(r"[^A-Za-z0-9._-]+", "_", ring_name)[:64]
    out = policy.folder / f"{safe_name}-{reason}-{stamp}.trace"
    for index in range(1, 1000):
        if not out.exists():
            break
        out = policy.folder / f"{safe_name}-{reason}-{stamp}-{index}.trace"
    # the trace holds the window: what this reader lost is the ring's loss, what it read is the window
    ring = {**ring_meta(reader), "read": int(records.size)}
    first = int(records["ts_ns"].min()) if records.size else None
    trace = Trace(meta={
        "gpuscope_version": __version__, "source": "metrics", **meta, "ring": ring, "exit": None,
        "capture": {"reason": reason, "detail": detail, "seconds": policy.seconds, "realtime_s": time.time(),
                    "first_ts_ns": first, "records": int(records.size)},
    }, tables=tables)
    save_trace(trace, out)
    return out
