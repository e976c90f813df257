"""Read a gpuscope ring: live while its writer runs, or left behind by a writer that exited or crashed.

The reader maps the file read-only and never trusts it: the whole header is validated before any record is
touched, and every offset taken from the file is bounds-checked, so a corrupt or hostile file raises a
`RingError` instead of reading out of bounds.

Draining follows the writer's commit protocol (see native_hooks/gpuscope_ring.h): a record is taken only when
its commit sequence equals ticket + 1 both before and after it was copied. Tickets whose slot was overwritten
by a newer record are counted in `lost`, so read + lost always equals the tickets handed out (`written`).
The three copies (sequences, records, sequences) are bulk numpy operations: no Python loop per record.
"""
from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gpuscope.errors import CorruptRingError, NotARingError, RingVersionError
from gpuscope.ring.schema import Schema, load_schema

# Records copied per pass: small enough that the three passes hit the cache.
_CHUNK = 1 << 14


@dataclass(frozen=True)
class RingHeader:
    """The static part of a validated ring header."""
    abi_version: int
    capacity: int
    strings_offset: int
    strings_capacity: int
    records_offset: int
    file_size: int
    start_monotonic_ns: int
    start_realtime_ns: int
    writer_pid: int


@dataclass(frozen=True)
class RingStatus:
    state: str            # 'alive', 'exited' (died without closing: killed), 'crashed', 'closed'
    pid: int
    crash_signal: int     # signal number that marked the ring crashed, else 0
    written: int          # tickets handed out by the writer
    read: int             # records this reader has taken
    lost: int             # records this reader will never see (overwritten, or abandoned by a dead writer)
    strings_dropped: int  # names the writer could not intern (string section full)
    writer_dropped: int   # records a lapped producer gave up

    @property
    def pending(self) -> int:
        """Tickets neither read nor lost yet (in flight, or not drained)."""
        return self.written - self.read - self.lost


class RingReader:
    """A read-only view of one ring file; `drain()` returns what was committed since the last call."""

    def __init__(self, path: str | os.PathLike, schema: Schema | None = None):
        self.path = Path(path)
        self.schema = schema or load_schema()
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise NotARingError(f"{self.path}: no such ring file") from None
        try:
            size = os.fstat(fd).st_size
            if size < self.schema.constants["GPUSCOPE_HEADER_SIZE"]:
                raise NotARingError(
                    f"{self.path}: {size} bytes is too short for a gpuscope ring header "
                    f"({self.schema.constants['GPUSCOPE_HEADER_SIZE']} bytes): not a ring, or truncated")
            # populate: the reader will touch every page of the ring anyway; fault them in once, up front
            self._map = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                                  prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self._header_dtype = self.schema.structs["gpuscope_ring_header"].dtype()
        try:
            self.header = self._validate(size)
        except Exception:
            self._map.close()
            raise
        # Records are copied as opaque 64-byte items (a plain memcpy) and typed only when decoded.
        self._opaque = np.dtype((np.void, self.schema.record_size))
        self._records = np.frombuffer(self._map, self._opaque, self.header.capacity, self.header.records_offset)
        self._seqs = np.frombuffer(self._map, np.uint64, self.header.capacity * self.schema.record_size // 8,
                                   self.header.records_offset)[:: self.schema.record_size // 8]
        self._strings = np.frombuffer(self._map, np.uint8, self.header.strings_capacity,
                                      self.header.strings_offset)
        self._string_cache: dict[int, str] = {0: ""}
        self._next_ticket = 0
        self.read = 0
        self.lost = 0
        self.unknown_kinds: dict[int, int] = {}  # kind id -> records of kinds this schema does not know

    # -- header -----------------------------------------------------------------------------------------------

    def _live_header(self) -> np.void:
        """A snapshot of the header (a copy: no view into the map outlives the call)."""
        return np.frombuffer(self._map, self._header_dtype, 1, 0).copy()[0]

    def _validate(self, file_size: int) -> RingHeader:
        c = self.schema.constants
        h = self._live_header()
        where = str(self.path)
        if int(h["magic"]) != c["GPUSCOPE_MAGIC"]:
            if int(h["magic"]) == 0 and int(h["abi_version"]) != 0:
                raise NotARingError(f"{where}: the ring header is not finished yet (its writer is still creating it)")
            raise NotARingError(f"{where}: not a gpuscope ring (magic {int(h['magic']):#018x})")
        if int(h["abi_version"]) != c["GPUSCOPE_ABI_VERSION"]:
            raise RingVersionError(
                f"{where}: written by ring ABI version {int(h['abi_version'])}, this gpuscope reads version "
                f"{c['GPUSCOPE_ABI_VERSION']}: read it with the gpuscope that matches the engine build")
        expected = {"header_size": c["GPUSCOPE_HEADER_SIZE"], "record_size": c["GPUSCOPE_RECORD_SIZE"],
                    "payload_size": c["GPUSCOPE_PAYLOAD_SIZE"]}
        for field, value in expected.items():
            if int(h[field]) != value:
                raise CorruptRingError(f"{where}: header says {field} = {int(h[field])}, expected {value}")
        capacity = int(h["capacity"])
        if capacity == 0 or capacity & (capacity - 1) or capacity > 1 << 34:
            raise CorruptRingError(f"{where}: capacity {capacity} is not a power of two in range")
        strings_offset, strings_capacity = int(h["strings_offset"]), int(h["strings_capacity"])
        records_offset, declared_size = int(h["records_offset"]), int(h["file_size"])
        records_end = records_offset + capacity * c["GPUSCOPE_RECORD_SIZE"]
        if not (c["GPUSCOPE_HEADER_SIZE"] <= strings_offset and strings_offset + strings_capacity <= records_offset
                and records_offset % c["GPUSCOPE_RECORD_SIZE"] == 0 and records_end <= declared_size):
            raise CorruptRingError(
                f"{where}: sections overlap or overrun the file (strings at {strings_offset}+{strings_capacity}, "
                f"records at {records_offset}+{capacity} records, file_size {declared_size})")
        if declared_size != file_size:
            raise CorruptRingError(
                f"{where}: the file is {file_size} bytes but its header says {declared_size}: truncated or damaged")
        if int(h["state"]) not in self.schema.enums["ring_state"]:
            raise CorruptRingError(f"{where}: unknown writer state {int(h['state'])}")
        if int(h["n_devices"]) > c["GPUSCOPE_MAX_DEVICES"]:
            raise CorruptRingError(f"{where}: {int(h['n_devices'])} devices, more than the header holds")
        return RingHeader(
            abi_version=int(h["abi_version"]), capacity=capacity, strings_offset=strings_offset,
            strings_capacity=strings_capacity, records_offset=records_offset, file_size=declared_size,
            start_monotonic_ns=int(h["start_monotonic_ns"]), start_realtime_ns=int(h["start_realtime_ns"]),
            writer_pid=int(h["writer_pid"]),
        )

    # -- writer state -------------------------------------------------------------------------------------------

    def _writer_state(self, h: np.void) -> str:
        state = self.schema.enums["ring_state"][int(h["state"])]
        if state != "open":
            return state
        return "alive" if _process_alive(self.header.writer_pid) else "exited"

    @property
    def status(self) -> RingStatus:
        h = self._live_header()
        return RingStatus(
            state=self._writer_state(h), pid=self.header.writer_pid, crash_signal=int(h["crash_signal"]),
            written=int(h["write_cursor"]), read=self.read, lost=self.lost,
            strings_dropped=int(h["strings_dropped"]), writer_dropped=int(h["writer_dropped"]),
        )

    # -- records ------------------------------------------------------------------------------------------------

    def skip_to(self, ticket: int) -> None:
        """Read from `ticket` on (a write cursor taken earlier, see `status.written`): the records before it belong
        to someone else (an earlier session on the same engine) and are neither read nor counted as lost."""
        cursor = int(self._live_header()["write_cursor"])
        if not 0 <= ticket <= cursor:
            raise ValueError(f"ticket {ticket} is not between 0 and the write cursor {cursor}")
        self._next_ticket = max(self._next_ticket, ticket)

    def drain(self, max_records: int | None = None) -> np.ndarray:
        """Committed records since the last drain, in ticket order, as a structured array (raw records)."""
        h = self._live_header()
        cursor = int(h["write_cursor"])
        if not self._next_ticket <= cursor < 1 << 62:
            raise CorruptRingError(f"{self.path}: write cursor {cursor} is impossible "
                                   f"(already read up to ticket {self._next_ticket})")
        writer_done = self._writer_state(h) != "alive"
        capacity = self.header.capacity
        if cursor - self._next_ticket > capacity:  # lapped: the oldest records were overwritten
            self.lost += cursor - capacity - self._next_ticket
            self._next_ticket = cursor - capacity
        if max_records is not None:
            cursor = min(cursor, self._next_ticket + max_records)
        out = np.empty(cursor - self._next_ticket, self._opaque)
        filled = 0
        while self._next_ticket < cursor:
            first = self._next_ticket
            slot = first & (capacity - 1)
            count = min(cursor - first, capacity - slot, _CHUNK)
            kept, n_done = self._copy_committed(first, slot, count, writer_done, out[filled:filled + count])
            filled += kept
            self._next_ticket += n_done
            if n_done < count:  # a producer has not committed its record yet: resume there next time
                break
        self.read += filled
        return out[:filled].view(self.schema.record_dtype)

    def _copy_committed(self, first: int, slot: int, count: int, writer_done: bool,
                        dest: np.ndarray) -> tuple[int, int]:
        """Copy `count` slots into `dest`, keep the committed ones at its front: (records kept, tickets done)."""
        busy = np.uint64(self.schema.constants["GPUSCOPE_SEQ_BUSY"])
        window = slice(slot, slot + count)
        seq_before = self._seqs[window].copy()
        dest[:] = self._records[window]
        seq_after = self._seqs[window].copy()
        expected = np.arange(first + 1, first + count + 1, dtype=np.uint64)
        committed = (seq_before == expected) & (seq_after == expected)
        if committed.all():
            return count, count
        overwritten = ((seq_before & ~busy) > expected) | ((seq_after & ~busy) > expected)
        unfinished = ~committed & ~overwritten
        if writer_done:  # nobody will ever finish these
            overwritten |= unfinished
            n_done = count
        else:
            stops = np.flatnonzero(unfinished)
            n_done = int(stops[0]) if stops.size else count
        self.lost += int(np.count_nonzero(overwritten[:n_done]))
        kept = dest[:n_done][committed[:n_done]]
        dest[:kept.size] = kept
        return kept.size, n_done

    # -- decoding -----------------------------------------------------------------------------------------------

    def string(self, string_id: int) -> str:
        """The interned string `string_id`; a damaged id gives a visible placeholder, never an out-of-bounds read."""
        cached = self._string_cache.get(string_id)
        if cached is not None:
            return cached
        used = min(int(self._live_header()["strings_used"]), self.header.strings_capacity)
        if string_id % 4 or string_id + 4 > used:
            return f"<bad string {string_id}>"
        length = int(self._strings[string_id:string_id + 4].view(np.uint32)[0])
        if length == 0 or string_id + 4 + length > used:
            return f"<bad string {string_id}>"
        text = self._strings[string_id + 4:string_id + 4 + length].tobytes().decode("utf-8", "replace")
        self._string_cache[string_id] = text
        return text

    def device_names(self) -> list[str]:
        h = self._live_header()
        n_devices = min(int(h["n_devices"]), self.schema.constants["GPUSCOPE_MAX_DEVICES"])
        return [self.string(int(i)) for i in h["device_names"][:n_devices]]

    def decode(self, records: np.ndarray) -> dict[str, pd.DataFrame]:
        """One DataFrame per event kind present in `records`, with named, typed columns."""
        devices = self.device_names()
        tables: dict[str, pd.DataFrame] = {}
        kinds = records["kind"]
        opaque = records.view(self._opaque)  # selecting opaque items is a memcpy, structured ones are not
        for kind_id in np.unique(kinds):
            kind_name = self.schema.kinds.get(int(kind_id))
            if kind_name is None:  # a newer writer's kind: counted, never guessed at
                self.unknown_kinds[int(kind_id)] = self.unknown_kinds.get(int(kind_id), 0) + int(
                    np.count_nonzero(kinds == kind_id))
                continue
            rows = opaque[kinds == kind_id].view(self.schema.kind_record_dtype(kind_name))
            tables[kind_name] = self._frame(kind_name, rows, devices)
        return tables

    def _frame(self, kind_name: str, rows: np.ndarray, devices: list[str]) -> pd.DataFrame:
        columns: dict[str, object] = {
            "seq": rows["seq"] - np.uint64(1),  # the ticket: global order across kinds
            "ts_ns": rows["ts_ns"].astype(np.int64),
            "tid": rows["tid"],
            "device": _categorical(rows["device"].astype(np.int64), lambda i: devices[i] if 0 <= i < len(devices)
                                   else None),
        }
        for field in self.schema.payload(kind_name).fields:
            values = rows[field.name]
            if field.decode == "string":
                columns[field.name] = _categorical(values.astype(np.int64), self.string)
            elif field.decode == "device":
                columns[field.name] = _categorical(values.astype(np.int64), lambda i: devices[i]
                                                   if 0 <= i < len(devices) else None)
            elif field.enum:
                labels = self.schema.enums[field.enum]
                columns[field.name] = _categorical(values.astype(np.int64), lambda v, labels=labels:
                                                   labels.get(v, f"unknown({v})"))
            else:
                columns[field.name] = values
        return pd.DataFrame(columns)

    def read_all(self) -> dict[str, pd.DataFrame]:
        """Drain everything committed now and decode it."""
        return self.decode(self.drain())

    def close(self) -> None:
        self._records = self._seqs = self._strings = None  # release the buffer exports before closing the map
        self._map.close()

    def __enter__(self) -> "RingReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_when_ready(path: Path) -> RingReader | None:
    """A reader for a ring a writer creates lazily: None while the file or its header does not exist yet."""
    if not path.exists():
        return None
    try:
        return RingReader(path)
    except NotARingError:  # the writer is still writing the header
        return None


def _categorical(codes: np.ndarray, resolve) -> pd.Categorical:
    """Resolve a column of small-cardinality ids through `resolve` once per distinct id."""
    inverse, unique = pd.factorize(codes)
    labels = [resolve(int(u)) for u in unique]
    categories = pd.unique(pd.Series([label for label in labels if label is not None], dtype=object))
    position = {label: i for i, label in enumerate(categories)}
    mapping = np.array([position[label] if label is not None else -1 for label in labels], dtype=np.int32)
    return pd.Categorical.from_codes(mapping[inverse] if codes.size else mapping[:0], categories=categories)


def _process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as dead: it will never write again)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    except PermissionError:
        return True
