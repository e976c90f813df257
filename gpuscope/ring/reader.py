"""Read a gpuscope ring: live while its writer runs, or left behind by a writer that exited or crashed.

The reader never trusts the file. It opens only a regular file (a FIFO or a device at the path is refused before a
byte is read), validates the whole header before any record is touched and bounds-checks every offset taken from the
file. It does not map the ring: every byte comes through `pread` into the reader's own buffers, so memory follows
what was written rather than the declared capacity, and a ring truncated under the reader is a short read (a
`RingError`), never a SIGBUS. The header's static part is compared on every read, so a ring re-created or
overwritten in place under the reader is a `RingError` too.

Draining follows the writer's commit protocol (see native_hooks/gpuscope_ring.h): a record is taken only when
its commit sequence equals ticket + 1 both before and after it was copied. Tickets whose slot was overwritten
by a newer record are counted in `lost`, so read + lost always equals the tickets handed out (`written`).
While a writer holds the ring's lock, the three copies (sequences, records, sequences) are bulk reads of a
whole batch, no Python loop per record; once no process holds it nothing can change, and one copy is enough.
"""
from __future__ import annotations

import fcntl
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gpuscope.errors import CorruptRingError, NotARingError, RingNotReadyError, RingVersionError
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
        header_struct = self.schema.structs["gpuscope_ring_header"]
        self._header_dtype = header_struct.dtype()
        self._static_bytes = next(f.offset for f in header_struct.fields if f.name == "state")
        self._file = _open_regular_file(self.path)
        try:
            file_stat = os.fstat(self._file.fileno())
            self._identity = _identity(file_stat)
            _check_size(self.path, file_stat.st_size, self.schema.constants["GPUSCOPE_HEADER_SIZE"])
            first = self._read_header()
            self.header = self._validate(first, file_stat.st_size)
        except BaseException:
            self._file.close()
            raise
        self._static = first.tobytes()[: self._static_bytes]
        # Records are copied as opaque 64-byte items (a plain memcpy) and typed only when decoded.
        self._opaque = np.dtype((np.void, self.schema.record_size))
        # The two sequence passes read whole records (pread cannot skip): these hold them.
        chunk = min(_CHUNK, self.header.capacity)
        self._seq_before = np.empty(chunk, self._opaque)
        self._seq_after = np.empty(chunk, self._opaque)
        self._string_cache: dict[int, str] = {0: ""}
        self._next_ticket = 0
        self.read = 0
        self.lost = 0
        self.unknown_kinds: dict[int, int] = {}  # kind id -> records of kinds this schema does not know

    # -- reading the file -------------------------------------------------------------------------------------

    def _read_into(self, buffer: np.ndarray, offset: int) -> None:
        """Fill `buffer` from `offset`; a file that ends first was truncated under the reader."""
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view):
            n = os.preadv(self._file.fileno(), [view[done:]], offset + done)
            if n == 0:
                raise CorruptRingError(f"{self.path}: the file ends at byte {offset + done}, inside the ring: "
                                       "it was truncated under this reader")
            done += n

    def _read_header(self) -> np.void:
        """A snapshot of the header, read from the file."""
        buffer = np.empty(1, self._header_dtype)
        self._read_into(buffer, 0)
        return buffer[0]

    def _live_header(self) -> np.void:
        """The header now, checked to be the same ring's: static part unchanged, state known."""
        h = self._read_header()
        if h.tobytes()[: self._static_bytes] != self._static:
            raise CorruptRingError(
                f"{self.path}: the ring was re-created or overwritten under this reader (its header changed): "
                "what was read so far stands; open it again to read the new one")
        self._check_state(h)
        return h

    def _check_state(self, h: np.void) -> None:
        if int(h["state"]) not in self.schema.enums["ring_state"]:
            raise CorruptRingError(f"{self.path}: unknown writer state {int(h['state'])}")

    def _path_names_another_file(self) -> bool:
        """True when the path now names another file than the one this reader holds (removed and re-created)."""
        try:
            return _identity(os.stat(self.path)) != self._identity
        except OSError:  # gone (the writer's owner removed it): the ring held here is still the one to read
            return False

    # -- header -----------------------------------------------------------------------------------------------

    def _validate(self, h: np.void, file_size: int) -> RingHeader:
        c = self.schema.constants
        where = str(self.path)
        if int(h["magic"]) != c["GPUSCOPE_MAGIC"]:
            if int(h["magic"]) == 0:
                raise RingNotReadyError(f"{where}: the ring header is not written yet (its writer is still "
                                        "creating it), or this is not a ring")
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
        if capacity == 0 or capacity & (capacity - 1) or capacity > c["GPUSCOPE_MAX_CAPACITY"]:
            raise CorruptRingError(f"{where}: capacity {capacity} is not a power of two from 1 to "
                                   f"{c['GPUSCOPE_MAX_CAPACITY']} records")
        strings_offset, strings_capacity = int(h["strings_offset"]), int(h["strings_capacity"])
        records_offset, declared_size = int(h["records_offset"]), int(h["file_size"])
        records_end = records_offset + capacity * c["GPUSCOPE_RECORD_SIZE"]
        if not (c["GPUSCOPE_HEADER_SIZE"] <= strings_offset and strings_offset + strings_capacity <= records_offset
                and strings_capacity < 1 << 32 and records_offset % c["GPUSCOPE_RECORD_SIZE"] == 0
                and records_end <= declared_size):
            raise CorruptRingError(
                f"{where}: sections overlap or overrun the file (strings at {strings_offset}+{strings_capacity}, "
                f"records at {records_offset}+{capacity} records, file_size {declared_size})")
        if declared_size != file_size:
            raise CorruptRingError(
                f"{where}: the file is {file_size} bytes but its header says {declared_size}: truncated or damaged")
        self._check_state(h)
        if int(h["n_devices"]) > c["GPUSCOPE_MAX_DEVICES"]:
            raise CorruptRingError(f"{where}: {int(h['n_devices'])} devices, more than the header holds")
        return RingHeader(
            abi_version=int(h["abi_version"]), capacity=capacity, strings_offset=strings_offset,
            strings_capacity=strings_capacity, records_offset=records_offset, file_size=declared_size,
            start_monotonic_ns=int(h["start_monotonic_ns"]), start_realtime_ns=int(h["start_realtime_ns"]),
            writer_pid=int(h["writer_pid"]),
        )

    # -- writer state -------------------------------------------------------------------------------------------

    def _writer_state(self, h: np.void, holds_lock: bool) -> str:
        state = self.schema.enums["ring_state"][int(h["state"])]
        if state != "open":
            return state
        return "alive" if holds_lock else "exited"

    def _writer_holds_lock(self) -> bool:
        """The writer holds an exclusive flock on its ring while it is open; the kernel drops it when the writer
        dies, however it dies (a pid could be reused, or belong to another pid namespace)."""
        fd = self._file.fileno()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:  # a file system without flock: the writer's pid is all there is
            return _process_alive(self.header.writer_pid)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False

    @property
    def status(self) -> RingStatus:
        h = self._live_header()
        return RingStatus(
            state=self._writer_state(h, self._writer_holds_lock()), pid=self.header.writer_pid, crash_signal=int(h["crash_signal"]),
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
        """Committed records since the last drain, in ticket order, as a structured array (raw records).

        Once the path names another file (the ring was removed and a new one made there) and this ring has
        nothing more to give, a `CorruptRingError` says so."""
        h = self._live_header()
        cursor = int(h["write_cursor"])
        if not self._next_ticket <= cursor < 1 << 62:
            raise CorruptRingError(f"{self.path}: write cursor {cursor} is impossible "
                                   f"(already read up to ticket {self._next_ticket})")
        holds_lock = self._writer_holds_lock()
        writer_done = self._writer_state(h, holds_lock) != "alive"
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
            kept, n_done = self._copy_committed(first, slot, count, writer_done, holds_lock,
                                                out[filled:filled + count])
            filled += kept
            self._next_ticket += n_done
            if n_done < count:  # a producer has not committed its record yet: resume there next time
                break
        self.read += filled
        if filled == 0 and writer_done and self._path_names_another_file():
            raise CorruptRingError(f"{self.path}: another ring file is at this path now (the one read here was "
                                   "removed and a new one made): everything of the old ring was read; open the "
                                   "new one with a new reader")
        return out[:filled].view(self.schema.record_dtype)

    def _copy_committed(self, first: int, slot: int, count: int, writer_done: bool, writer_holds_lock: bool,
                        dest: np.ndarray) -> tuple[int, int]:
        """Copy `count` slots into `dest`, keep the committed ones at its front: (records kept, tickets done)."""
        busy = np.uint64(self.schema.constants["GPUSCOPE_SEQ_BUSY"])
        offset = self.header.records_offset + slot * self.schema.record_size
        stride = self.schema.record_size // 8
        if writer_holds_lock:
            before, after = self._seq_before[:count], self._seq_after[:count]
            self._read_into(before, offset)
            self._read_into(dest, offset)
            self._read_into(after, offset)
            seq_before, seq_after = before.view(np.uint64)[::stride], after.view(np.uint64)[::stride]
        else:  # no process holds the ring open any more: nothing changes between copies, one is enough
            self._read_into(dest, offset)
            seq_before = seq_after = dest.view(np.uint64)[::stride]
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
        entry = self.header.strings_offset + string_id
        length_field = np.empty(1, np.uint32)
        self._read_into(length_field, entry)
        length = int(length_field[0])
        if length == 0 or string_id + 4 + length > used:
            return f"<bad string {string_id}>"
        text_bytes = np.empty(length, np.uint8)
        self._read_into(text_bytes, entry + 4)
        text = text_bytes.tobytes().decode("utf-8", "replace")
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
        self._file.close()

    def __enter__(self) -> "RingReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_when_ready(path: Path) -> RingReader | None:
    """A reader for a ring a writer creates lazily: None while the file or its header does not exist yet; anything
    else at the path that is not a readable ring raises its RingError."""
    try:
        return RingReader(path)
    except RingNotReadyError:
        return None


def _open_regular_file(path: Path):
    """The file at `path`, opened read-only without blocking (a FIFO would block a plain open forever) and checked
    to be a regular file before a byte is read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise RingNotReadyError(f"{path}: no such ring file") from None
    except PermissionError:
        raise NotARingError(_permission_denied(path)) from None
    except OSError as exc:
        raise NotARingError(f"{path}: cannot open it as a ring: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotARingError(f"{path}: a {_file_kind(mode)}, not a ring file")
    return os.fdopen(fd, "rb", buffering=0)


def _check_size(path: Path, size: int, header_size: int) -> None:
    if size == 0:  # the writer creates the file, then sizes it
        raise RingNotReadyError(f"{path}: an empty file (a ring whose writer is creating it, or not a ring)")
    if size < header_size:
        raise NotARingError(f"{path}: {size} bytes is too short for a gpuscope ring header ({header_size} bytes): "
                            "not a ring, or truncated")


def _permission_denied(path: Path) -> str:
    try:
        owner = os.stat(path)
    except OSError:
        return f"{path}: permission denied (a folder on the way is closed to this user)"
    try:
        name = pwd.getpwuid(owner.st_uid).pw_name
    except KeyError:
        name = "another user"
    return (f"{path}: permission denied: the ring belongs to {name} (uid {owner.st_uid}, mode "
            f"{stat.S_IMODE(owner.st_mode):04o}); read it as that user")


def _file_kind(mode: int) -> str:
    kinds = {stat.S_ISFIFO: "FIFO (named pipe)", stat.S_ISDIR: "directory", stat.S_ISCHR: "character device",
             stat.S_ISBLK: "block device", stat.S_ISSOCK: "socket"}
    return next((kind for test, kind in kinds.items() if test(mode)), "special file")


def _identity(file_stat: os.stat_result) -> tuple[int, int]:
    return file_stat.st_dev, file_stat.st_ino


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
