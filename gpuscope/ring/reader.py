"""Read a gpuscope ring: live while its writer runs, or left behind by a writer that exited or crashed.

The reader never trusts the file. It opens only a regular file (a FIFO or a device at the path is refused before a
byte is read), validates the whole header before any record is touched and bounds-checks every offset taken from the
file. It does not map the ring: every byte comes through `pread` into the reader's own buffers, so memory follows
what was written rather than the declared capacity, and a ring truncated under the reader is a short read (a
`RingError`), never a SIGBUS. The header's static part is compared on every read, so a ring re-created or
overwritten in place under the reader is a `RingError` too.

Draining follows the writer's commit protocol (see native_hooks/gpuscope_ring.h). Each block has one writer at a
time and a key (writer, sequence number of its first record); record i of a block is taken only when its commit
sequence is key + i both before and after it was copied, and the committed records of a block are a prefix of it.
Blocks are visited oldest ticket first, so a thread's records are never seen out of order: once a writer's
sequence number n was taken, its numbers below n that were not are gone for good (overwritten, or given up by a
lapped thread) and are counted in `lost`. Every writer's count of what it emitted is in the file, so
read + lost + pending == written exactly, and once the writer is gone pending is 0.
While a writer holds the ring's lock, the three copies (sequences, records, sequences) are bulk reads of a
whole run of blocks, no Python loop per record; once no process holds it nothing can change, and one copy is
enough. TSC timestamps are converted to CLOCK_MONOTONIC nanoseconds with the header's calibration pairs.
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
# Readers agree with CLOCK_MONOTONIC within this, for TSC rings (tests/test_ring_native.py measures it).
CLOCK_BOUND_NS = 5_000


@dataclass(frozen=True)
class RingHeader:
    """The static part of a validated ring header."""
    abi_version: int
    capacity: int
    block_records: int
    max_writers: int
    clock: str            # 'monotonic' or 'tsc': what the records' timestamps hold in the file
    clock_ticks_per_s: int
    writers_offset: int
    blocks_offset: int
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
    written: int          # records the writer's threads emitted since this reader's starting point
    read: int             # records this reader has taken
    lost: int             # records this reader will never see (overwritten, given up, or abandoned by a dead writer)
    strings_dropped: int  # names the writer could not intern (string section full)
    writer_dropped: int   # records a lapped producer gave up (they are also in `lost`)
    position: dict        # what this reader has taken or counted lost, for `skip_to` (JSON-able)

    @property
    def pending(self) -> int:
        """Records neither read nor lost yet (in flight, or not drained)."""
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
        n_blocks, writers = self.header.capacity // self.header.block_records, self.header.max_writers
        self._block_key = np.zeros(n_blocks, np.uint64)    # the block's key when it was last visited
        self._block_taken = np.zeros(n_blocks, np.int64)   # records of that key taken (block_records: done)
        self._base = np.zeros(writers, np.uint64)          # per writer: numbers up to here are someone else's
        self._hi = np.zeros(writers, np.uint64)            # per writer: the highest number taken or skipped
        self._taken = np.zeros(writers, np.int64)          # per writer: records taken above the base
        self._base_unattached = 0
        self._writer_gone_scanned = False  # the last scan ran after the writer was gone: everything is settled
        self._clock_pairs: dict[int, tuple[int, int]] = {}  # pair number -> (ticks, ns), kept past the header's
        self._held: list[np.ndarray] = []  # taken but not returned yet (drain's max_records)
        self._order = 0
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
        block_records, max_writers = int(h["block_records"]), int(h["max_writers"])
        # The block size follows the capacity (and was 64 records in every ring of the first ABI 3 writers).
        most = c["GPUSCOPE_MAX_BLOCK_RECORDS"]
        if not 0 < block_records <= most or block_records & (block_records - 1) or \
                not 0 < max_writers <= c["GPUSCOPE_MAX_WRITERS"]:
            raise CorruptRingError(f"{where}: header says {block_records} records per block and {max_writers} "
                                   f"writers, expected a power of two up to {most} and at most "
                                   f"{c['GPUSCOPE_MAX_WRITERS']} writers")
        capacity = int(h["capacity"])
        if (capacity < block_records or capacity & (capacity - 1) or capacity > c["GPUSCOPE_MAX_CAPACITY"]):
            raise CorruptRingError(f"{where}: capacity {capacity} is not a power of two from {block_records} to "
                                   f"{c['GPUSCOPE_MAX_CAPACITY']} records")
        clock = self.schema.enums["ring_clock"].get(int(h["clock"]))
        if clock is None or (clock == "tsc") != (int(h["clock_ticks_per_s"]) > 0):
            raise CorruptRingError(f"{where}: unknown timestamp clock {int(h['clock'])} "
                                   f"(ticks per second {int(h['clock_ticks_per_s'])})")
        writers_offset, blocks_offset = int(h["writers_offset"]), int(h["blocks_offset"])
        writers_end = writers_offset + max_writers * self.schema.structs["gpuscope_ring_writer"].size
        blocks_end = blocks_offset + capacity // block_records * 8
        strings_offset, strings_capacity = int(h["strings_offset"]), int(h["strings_capacity"])
        records_offset, declared_size = int(h["records_offset"]), int(h["file_size"])
        records_end = records_offset + capacity * c["GPUSCOPE_RECORD_SIZE"]
        if not (c["GPUSCOPE_HEADER_SIZE"] <= writers_offset and writers_end <= blocks_offset and blocks_offset % 8 == 0
                and blocks_end <= strings_offset and strings_offset + strings_capacity <= records_offset
                and strings_capacity < 1 << 32 and records_offset % c["GPUSCOPE_RECORD_SIZE"] == 0
                and records_end <= declared_size):
            raise CorruptRingError(
                f"{where}: sections overlap or overrun the file (writers at {writers_offset}, blocks at "
                f"{blocks_offset}, strings at {strings_offset}+{strings_capacity}, records at {records_offset}+"
                f"{capacity} records, file_size {declared_size})")
        if declared_size != file_size:
            raise CorruptRingError(
                f"{where}: the file is {file_size} bytes but its header says {declared_size}: truncated or damaged")
        self._check_state(h)
        if int(h["n_devices"]) > c["GPUSCOPE_MAX_DEVICES"]:
            raise CorruptRingError(f"{where}: {int(h['n_devices'])} devices, more than the header holds")
        return RingHeader(
            abi_version=int(h["abi_version"]), capacity=capacity, block_records=block_records,
            max_writers=max_writers, clock=clock, clock_ticks_per_s=int(h["clock_ticks_per_s"]),
            writers_offset=writers_offset, blocks_offset=blocks_offset, strings_offset=strings_offset,
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
        writers = self._read_writers()
        return RingStatus(
            state=self._writer_state(h, self._writer_holds_lock()), pid=self.header.writer_pid,
            crash_signal=int(h["crash_signal"]), written=self._accounting(h, writers, final=False)[0],
            read=self.read, lost=self.lost,
            strings_dropped=int(h["strings_dropped"]),
            writer_dropped=int(writers["dropped"].sum()) + int(h["unattached_dropped"]),
            position=self._position(self._hi, int(h["unattached_dropped"])),
        )

    def _read_writers(self) -> np.ndarray:
        writers = np.empty(self.header.max_writers, self.schema.structs["gpuscope_ring_writer"].dtype())
        self._read_into(writers, self.header.writers_offset)
        return writers

    def _accounting(self, h: np.void, writers: np.ndarray, final: bool) -> tuple[int, int]:
        """(written, lost) since this reader's starting point. Per writer, written is the count its entry gives
        (or what was seen of it, should a damaged entry say less) and lost the numbers up to the highest one
        taken that were not; `final`: the writer is gone, so every number it gave out that was not taken is lost."""
        taken = self._taken.astype(np.uint64)
        seen = np.maximum(writers["emitted"].astype(np.uint64), self._hi) - self._base
        written = np.maximum(seen, taken)
        lost = written - taken if final else np.maximum(self._hi - self._base, taken) - taken
        unattached = max(0, int(h["unattached_dropped"]) - self._base_unattached)
        return int(written.sum()) + unattached, int(lost.sum()) + unattached

    @staticmethod
    def _position(per_writer: np.ndarray, unattached: int) -> dict:
        used = np.flatnonzero(per_writer)
        return {"writers": {str(int(w)): int(per_writer[w]) for w in used}, "unattached": int(unattached)}

    def written_position(self) -> dict:
        """Everything the writer has emitted so far, as a position for `skip_to`."""
        return self._position(self._read_writers()["emitted"].astype(np.uint64),
                              int(self._live_header()["unattached_dropped"]))

    def skip_to(self, position: dict) -> None:
        """Read only what comes after `position` (a `status.position` of an earlier reader, or
        `written_position()`): records up to it belong to someone else and are neither read nor counted as lost.
        Only before the first drain."""
        if self._order or self._taken.any():
            raise ValueError("skip_to is for a reader that has not drained yet")
        try:
            per_writer = {int(w): int(n) for w, n in position["writers"].items()}
            unattached = int(position["unattached"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ValueError(f"not a ring position: {position!r}") from None
        for w, n in per_writer.items():
            if not 0 <= w < self.header.max_writers or not 0 <= n < 1 << 47:
                raise ValueError(f"not a ring position: writer {w} at {n}")
            self._base[w] = self._hi[w] = n
        self._base_unattached = unattached

    def drain(self, max_records: int | None = None) -> np.ndarray:
        """Records committed since the last drain (at most `max_records`; the rest wait for the next call), in
        timestamp order, as a structured array (raw records, timestamps in CLOCK_MONOTONIC ns, `seq` this
        reader's running count from 1).

        Once the path names another file (the ring was removed and a new one made there) and this ring has
        nothing more to give, a `CorruptRingError` says so."""
        self._scan()
        if len(self._held) == 1:
            out = self._held[0]
        else:  # joined as opaque items: a structured concatenate copies field by field
            out = np.concatenate([held.view(self._opaque) for held in self._held] or [np.empty(0, self._opaque)])
            out = out.view(self.schema.record_dtype)
        if max_records is not None and out.size > max_records:
            self._held = [out[max_records:]]
            out = out[:max_records]
        else:
            self._held = []
        self.read += out.size
        if out.size == 0 and self._writer_gone_scanned and self._path_names_another_file():
            raise CorruptRingError(f"{self.path}: another ring file is at this path now (the one read here was "
                                   "removed and a new one made): everything of the old ring was read; open the "
                                   "new one with a new reader")
        return out

    def _scan(self) -> None:
        """Take every record committed now, oldest block ticket first, and settle the loss accounting."""
        h = self._live_header()
        size = os.fstat(self._file.fileno()).st_size
        if size < self.header.file_size:  # a drain may find nothing new to copy, yet the records are gone
            raise CorruptRingError(f"{self.path}: the file ends at byte {size}, inside the ring: it was truncated "
                                   "under this reader")
        holds_lock = self._writer_holds_lock()
        writer_done = self._writer_state(h, holds_lock) != "alive"
        B = self.header.block_records
        n_blocks = self._block_key.size
        states = np.empty(n_blocks, np.uint64)
        self._read_into(states, self.header.blocks_offset)
        open_bit = np.uint64(self.schema.constants["GPUSCOPE_BLOCK_OPEN"])
        keys = states & ~open_bit
        changed = keys != self._block_key
        self._block_key[changed] = keys[changed]
        self._block_taken[changed] = 0
        todo = np.flatnonzero((keys != 0) & (self._block_taken < B))
        oldest = int(h["block_cursor"]) & (n_blocks - 1)
        todo = todo[np.argsort((todo - oldest) % n_blocks, kind="stable")]
        closed = (states & open_bit) == 0
        taken: list[np.ndarray] = []
        # runs of consecutive blocks, each read with one pread per pass
        breaks = np.flatnonzero(np.diff(todo) != 1) + 1
        per_run = max(1, _CHUNK // B)
        for run in np.split(todo, breaks):
            for first in range(0, run.size, per_run):
                blocks = run[first:first + per_run]
                taken.append(self._take_blocks(blocks, keys[blocks], closed[blocks] | writer_done, holds_lock))
        # selections and reorderings on the opaque items (a memcpy each); fields through a structured view
        records = (taken[0] if len(taken) == 1 else np.concatenate(taken)) if taken else np.empty(0, self._opaque)
        mine = self._settle(records.view(self.schema.record_dtype), h, writer_done)
        if not mine.all():
            records = records[mine]
        if records.size:
            stamps = self._to_monotonic(records.view(self.schema.record_dtype)["ts_ns"].astype(np.int64))
            if (np.diff(stamps) < 0).any():  # threads' blocks interleave: one time order
                order = np.argsort(stamps, kind="stable")
                records, stamps = records[order], stamps[order]
            typed = records.view(self.schema.record_dtype)
            typed["ts_ns"] = stamps.astype(np.uint64)
            typed["seq"] = np.arange(self._order + 1, self._order + records.size + 1, dtype=np.uint64)
            self._order += records.size
            self._held.append(typed)

    def _take_blocks(self, blocks: np.ndarray, keys: np.ndarray, final: np.ndarray, writer_holds_lock: bool
                     ) -> np.ndarray:
        """The newly committed records of consecutive `blocks` (whose keys are `keys`); `final`: blocks whose owner
        is done with them, whose untaken rest will never be committed."""
        B = self.header.block_records
        count = blocks.size * B
        offset = self.header.records_offset + int(blocks[0]) * B * self.schema.record_size
        stride = self.schema.record_size // 8
        dest = np.empty(count, self._opaque)
        if writer_holds_lock:
            before, after = self._seq_before[:count], self._seq_after[:count]
            self._read_into(before, offset)
            self._read_into(dest, offset)
            self._read_into(after, offset)
            seq_before, seq_after = before.view(np.uint64)[::stride], after.view(np.uint64)[::stride]
        else:  # no process holds the ring open any more: nothing changes between copies, one is enough
            self._read_into(dest, offset)
            seq_before = seq_after = dest.view(np.uint64)[::stride]
        slot = np.arange(B, dtype=np.uint64)
        expected = (keys[:, None] + slot[None, :]).reshape(-1)
        committed = ((seq_before == expected) & (seq_after == expected)).reshape(blocks.size, B)
        already = self._block_taken[blocks]
        ok = committed | (slot[None, :] < already[:, None].astype(np.uint64))
        prefix = np.where(ok.all(axis=1), B, np.argmin(ok, axis=1))
        wanted = (slot[None, :] >= already[:, None].astype(np.uint64)) & (slot[None, :] < prefix[:, None])
        self._block_taken[blocks] = np.where(final, B, prefix)
        wanted = wanted.reshape(-1)
        return dest if wanted.all() else dest[wanted]  # whole blocks, the usual case, need no second copy

    def _settle(self, records: np.ndarray, h: np.void, writer_done: bool) -> np.ndarray:
        """Count what `records` add per writer and what is now lost for good; returns which records are this
        reader's (those past a `skip_to` position)."""
        shift = self.schema.constants["GPUSCOPE_WRITER_SHIFT"]
        seq = np.ascontiguousarray(records["seq"])  # the records' one strided read
        writer = ((seq >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.int64)
        number = seq & np.uint64((1 << shift) - 1)
        if writer.size and int(writer.max()) >= self.header.max_writers:
            raise CorruptRingError(f"{self.path}: a record names writer {int(writer.max())}, over the "
                                   f"{self.header.max_writers} the ring has")
        if self._base.any():  # late records of what was skipped stay skipped
            mine = number > self._base[writer]
            writer, number = writer[mine], number[mine]
        else:
            mine = np.ones(seq.size, bool)
        if writer.size:  # numpy >= 1.25 runs ufunc.at on a fast path: 10-20x a pandas grouped maximum
            np.maximum.at(self._hi, writer, number)
            self._taken += np.bincount(writer, minlength=self._taken.size)
        self.lost = self._accounting(h, self._read_writers(), final=writer_done)[1]
        self._writer_gone_scanned = writer_done
        return mine

    # -- timestamps ---------------------------------------------------------------------------------------------

    def _to_monotonic(self, stamps: np.ndarray) -> np.ndarray:
        """CLOCK_MONOTONIC ns for the records' stamps: TSC ticks go through the calibration pairs, piecewise
        linear between neighbours, the rate over all of them outside (the measured rate with one pair)."""
        if self.header.clock != "tsc":
            return stamps
        self._collect_clock_pairs()
        pairs = sorted(set(self._clock_pairs.values()))
        if not pairs:
            raise CorruptRingError(f"{self.path}: a TSC ring with no calibration pair")
        ticks = np.array([p[0] for p in pairs], np.int64)
        ns = np.array([p[1] for p in pairs], np.int64)
        keep = np.concatenate(([True], np.diff(ticks) > 0))  # a rate needs distinct ticks
        ticks, ns = ticks[keep], ns[keep]
        if ticks.size == 1:
            return ns[0] + np.rint((stamps - ticks[0]) * (1e9 / self.header.clock_ticks_per_s)).astype(np.int64)
        # between pairs, linear between neighbours (in float64: ticks and ns since boot stay far below 2**53)
        converted = np.rint(np.interp(stamps, ticks, ns)).astype(np.int64)
        # past either end, the rate over every pair: the newest segment may be a millisecond long; in floats, for a
        # damaged header's pairs can be far enough apart to overflow int64
        rate = (float(ns[-1]) - float(ns[0])) / (float(ticks[-1]) - float(ticks[0]))
        for outside, tick, at in ((stamps < ticks[0], ticks[0], ns[0]), (stamps > ticks[-1], ticks[-1], ns[-1])):
            if outside.any():
                converted[outside] = at + np.rint((stamps[outside] - tick) * rate).astype(np.int64)
        return converted

    def _collect_clock_pairs(self) -> None:
        """Add the header's complete pairs to those kept (the header holds the newest GPUSCOPE_CLOCK_PAIRS). A
        pair is read between two reads of its sequence: one being rewritten is left for the next drain."""
        fields = {f.name: f for f in self.schema.structs["gpuscope_ring_header"].fields}
        taken = np.empty(1, np.uint64)  # now, after the records: the pairs taken before their commits
        self._read_into(taken, fields["clock_pairs_taken"].offset)
        if int(taken[0]) == 0 or int(taken[0]) - 1 in self._clock_pairs:
            return
        n_pairs = self.schema.constants["GPUSCOPE_CLOCK_PAIRS"]
        seq_before, seq_after = np.empty(n_pairs, np.uint64), np.empty(n_pairs, np.uint64)
        pair_ticks, pair_ns = np.empty(n_pairs, np.int64), np.empty(n_pairs, np.int64)
        self._read_into(seq_before, fields["clock_pair_seq"].offset)
        self._read_into(pair_ticks, fields["clock_pair_ticks"].offset)
        self._read_into(pair_ns, fields["clock_pair_ns"].offset)
        self._read_into(seq_after, fields["clock_pair_seq"].offset)
        for i in np.flatnonzero((seq_before == seq_after) & (seq_before != 0)):
            n = int(seq_before[i]) - 1
            if n % n_pairs == i:
                self._clock_pairs[n] = (int(pair_ticks[i]), int(pair_ns[i]))

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
