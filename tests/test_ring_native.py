"""The C ring writer on its own: file, header, records and strings as written, read straight from the file.

No Python reader here: these tests decode the layout from gpuscope_ring.h by hand, so they check the writer
against its specification rather than against our own reader.
"""
from __future__ import annotations

import errno
import json
import os
import resource
import signal
import struct
import subprocess
import time

import numpy as np
import pytest

from gpuscope.errors import NativeBuildError
from gpuscope.ring import native
from ring_programs import run_library_client

MAGIC = 0x45504F4353555047
STATE_OPEN, STATE_CLOSED, STATE_CRASHED = 1, 2, 3
SEQ_BUSY = 1 << 63
BLOCK_OPEN = 1 << 63
WRITER_SHIFT = 47
BLOCK_RECORDS, MAX_WRITERS, CLOCK_PAIRS = 64, 1024, 64  # block_records of a 1024-record ring: 1024 / 16
CHECKSUM = 0x9E3779B97F4A7C15
KIND_MARK = 1

# gpuscope_ring_header, field by field (every field naturally aligned, so no padding).
HEADER_FIELDS = [
    ("magic", "Q"), ("abi_version", "I"), ("header_size", "I"), ("record_size", "I"), ("payload_size", "I"),
    ("capacity", "Q"), ("strings_offset", "Q"), ("strings_capacity", "Q"), ("records_offset", "Q"),
    ("file_size", "Q"), ("writers_offset", "Q"), ("blocks_offset", "Q"), ("block_records", "I"),
    ("max_writers", "I"), ("clock", "I"), ("reserved", "I"), ("clock_ticks_per_s", "q"),
    ("start_monotonic_ns", "q"), ("start_realtime_ns", "q"), ("writer_pid", "i"),
    ("state", "I"), ("crash_signal", "i"), ("n_devices", "I"), ("block_cursor", "Q"), ("strings_used", "Q"),
    ("strings_dropped", "Q"), ("unattached_dropped", "Q"), ("clock_pairs_taken", "Q"),
]
HEADER_STRUCT = struct.Struct("<" + "".join(code for _, code in HEADER_FIELDS) + f"{3 * CLOCK_PAIRS}Q64I")
WRITER = np.dtype([("emitted", "<u8"), ("dropped", "<u8"), ("in_use", "<u4"), ("tid", "<u4"), ("pad", "V40")])

# A record carrying a gpuscope_ev_mark payload (24 bytes used of 40).
MARK_RECORD = np.dtype([
    ("seq", "<u8"), ("ts_ns", "<u8"), ("kind", "<u2"), ("device", "<i2"), ("tid", "<u4"),
    ("value", "<i8"), ("value2", "<i8"), ("name", "<u4"), ("label", "<u4"), ("pad", "V16"),
])


def read_ring(path) -> tuple[dict, np.ndarray, dict[int, str]]:
    """Header fields, the committed records of every block, and the string section as {id: text}.

    A block's committed records are the slots i whose seq is the block's key + i (the key: its state without the
    OPEN bit); `header["writers"]` is the writer table and `header["blocks"]` the block states."""
    data = path.read_bytes()
    values = HEADER_STRUCT.unpack_from(data)
    header = dict(zip((name for name, _ in HEADER_FIELDS), values))
    header["device_names"] = list(values[-64:])
    header["writers"] = np.frombuffer(data, WRITER, count=header["max_writers"], offset=header["writers_offset"])
    n_blocks = header["capacity"] // header["block_records"]
    header["blocks"] = np.frombuffer(data, "<u8", count=n_blocks, offset=header["blocks_offset"])
    slots = np.frombuffer(data, MARK_RECORD, count=header["capacity"], offset=header["records_offset"])
    block = header["block_records"]
    keys = (header["blocks"] & np.uint64(~BLOCK_OPEN & (1 << 64) - 1)).repeat(block)
    expected = keys + np.tile(np.arange(block, dtype=np.uint64), n_blocks)
    records = slots[(keys != 0) & (slots["seq"] == expected)]
    strings = {}
    section = data[header["strings_offset"]:header["strings_offset"] + header["strings_used"]]
    offset = 0
    while offset < len(section):
        (length,) = struct.unpack_from("<I", section, offset)
        text = section[offset + 4:offset + 4 + length]
        assert section[offset + 4 + length] == 0, "string entry not NUL-terminated"
        strings[offset] = text.decode()
        offset += (4 + length + 1 + 3) // 4 * 4
    assert offset == header["strings_used"], "strings_used does not end on an entry boundary"
    return header, records, strings


def writer_of(seq: np.ndarray) -> np.ndarray:
    return (seq.astype(np.uint64) >> np.uint64(WRITER_SHIFT)).astype(np.int64)


def number_of(seq: np.ndarray) -> np.ndarray:
    return (seq.astype(np.uint64) & np.uint64((1 << WRITER_SHIFT) - 1)).astype(np.int64)


def no_core_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@pytest.fixture(scope="module")
def producer():
    return str(native.ring_tool("gpuscope-ring-producer"))


def test_wrapping_producers_leave_a_ring_that_matches_the_spec(producer, tmp_path):
    path = tmp_path / "wrap.ring"
    threads, events = 2, 20_000
    done = subprocess.run([producer, "--path", str(path), "--threads", str(threads), "--events", str(events),
                           "--capacity", "1000"], capture_output=True, text=True, timeout=60, check=True)
    summary = json.loads(done.stdout)
    header, records, strings = read_ring(path)

    assert os.stat(path).st_mode & 0o777 == 0o600
    assert header["magic"] == MAGIC
    assert (header["abi_version"], header["header_size"], header["record_size"], header["payload_size"]) == \
           (3, 4096, 64, 40)
    assert header["capacity"] == 1024  # rounded up to a power of two
    assert (header["block_records"], header["max_writers"]) == (BLOCK_RECORDS, MAX_WRITERS)
    assert header["writers_offset"] == 4096
    assert header["blocks_offset"] == header["writers_offset"] + MAX_WRITERS * 64
    assert header["strings_offset"] % 4096 == 0 and header["strings_offset"] >= header["blocks_offset"] + 16 * 8
    assert header["records_offset"] == header["strings_offset"] + header["strings_capacity"]
    assert header["records_offset"] % 64 == 0
    assert header["file_size"] == header["records_offset"] + 1024 * 64 == path.stat().st_size
    assert header["writer_pid"] > 0 and header["start_monotonic_ns"] > 0 and header["start_realtime_ns"] > 0
    assert (header["state"], header["crash_signal"]) == (STATE_CLOSED, 0)
    writers = header["writers"]
    used = writers[writers["emitted"] > 0]
    # the threads exited and gave their entries back; a thread that starts after another exited takes its entry
    assert 1 <= len(used) <= threads and (used["in_use"] == 0).all()
    assert int(used["emitted"].sum()) == summary["written"] == threads * events
    assert int(used["dropped"].sum()) + header["unattached_dropped"] == summary["writer_dropped"]
    assert header["strings_dropped"] == 0 and header["n_devices"] == 0
    assert not (header["blocks"] & np.uint64(BLOCK_OPEN)).any()  # every block given back
    assert header["block_cursor"] >= threads * events // BLOCK_RECORDS

    # Strings: the reserved empty entry at id 0, then each producer name once despite racing threads.
    assert strings[0] == ""
    assert sorted(strings.values()) == ["", "producer-0", "producer-1"]
    name_ids = {text: sid for sid, text in strings.items()}

    # The newest blocks hold the newest records of both threads; each block one writer's consecutive numbers.
    assert len(records) >= 1024 - threads * BLOCK_RECORDS
    values = records["value"].astype(np.uint64)
    with np.errstate(over="ignore"):
        assert (records["value2"].astype(np.uint64) == values * np.uint64(CHECKSUM)).all(), "torn record"
    assert (records["kind"] == KIND_MARK).all() and (records["device"] == -1).all()
    assert (records["label"] == 0).all() and records["pad"].tobytes() == bytes(16 * len(records))
    thread = (values >> np.uint64(40)).astype(np.int64)
    writer = writer_of(records["seq"])
    for t in set(thread.tolist()):
        mine = np.argsort(number_of(records["seq"][thread == t]))
        counters = (values[thread == t] & np.uint64((1 << 40) - 1))[mine].astype(np.int64)
        numbers = number_of(records["seq"][thread == t])[mine]
        assert np.unique(writer[thread == t]).size == 1  # one thread, one writer entry
        # every emit took the next sequence number of its writer entry, in order; the newest survived
        assert (np.diff(numbers) == np.diff(counters)).all() and counters.max() == events - 1
        assert (records["name"][thread == t] == name_ids[f"producer-{t}"]).all()
        assert np.unique(records["tid"][thread == t]).size == 1
    assert np.unique(records["tid"]).size == len(set(thread.tolist()))


def test_timestamps_are_tsc_ticks_with_calibration_pairs_or_monotonic_ns(producer, tmp_path):
    with open("/proc/cpuinfo") as cpuinfo:
        invariant_tsc = "constant_tsc" in cpuinfo.read() and os.uname().machine == "x86_64"
    for asked, clock in (({}, 2 if invariant_tsc else 1), ({"GPUSCOPE_RING_CLOCK": "monotonic"}, 1)):
        path = tmp_path / f"clock-{clock}-{len(asked)}.ring"
        before = time.monotonic_ns()
        subprocess.run([producer, "--path", str(path), "--threads", "1", "--events", "100"],
                       env={**os.environ, **asked}, check=True, capture_output=True, timeout=60)
        after = time.monotonic_ns()
        header, records, _ = read_ring(path)
        assert header["clock"] == clock
        stamps = records["ts_ns"].astype(np.int64)
        if clock == 1:
            assert header["clock_ticks_per_s"] == 0 and header["clock_pairs_taken"] == 0
            assert ((before <= stamps) & (stamps <= after)).all()
        else:  # a pair at open, others as it ages, one at close: every record lies between the first and last
            values = HEADER_STRUCT.unpack_from(path.read_bytes())[len(HEADER_FIELDS):]
            seqs, ticks, ns = (values[i * CLOCK_PAIRS:(i + 1) * CLOCK_PAIRS] for i in range(3))
            taken = header["clock_pairs_taken"]
            assert 2 <= taken <= CLOCK_PAIRS and seqs[:taken] == tuple(range(1, taken + 1))
            assert ticks[0] <= stamps.min() <= stamps.max() <= ticks[taken - 1]
            assert list(ticks[:taken]) == sorted(ticks[:taken]) and list(ns[:taken]) == sorted(ns[:taken])
            assert before <= ns[0] and ns[taken - 1] <= after
            assert 1e8 < header["clock_ticks_per_s"] < 1e10


def test_abort_marks_the_ring_crashed_and_keeps_what_was_written(producer, tmp_path):
    path = tmp_path / "abort.ring"
    done = subprocess.run([producer, "--path", str(path), "--threads", "2", "--events", "50000",
                           "--capacity", str(1 << 17), "--abort-after", "1000"],
                          capture_output=True, text=True, timeout=60, preexec_fn=no_core_dumps)
    assert done.returncode == -signal.SIGABRT  # the default action still ran after the ring was marked
    header, records, _ = read_ring(path)
    assert (header["state"], header["crash_signal"]) == (STATE_CRASHED, signal.SIGABRT)
    assert header["writers"]["dropped"].sum() == 0
    thread0 = np.sort(records["value"][records["value"] >> 40 == 0])
    assert (thread0 == np.arange(1000)).all()


def test_killed_writer_leaves_the_ring_open(producer, tmp_path):
    path = tmp_path / "killed.ring"
    proc = subprocess.Popen([producer, "--path", str(path), "--threads", "2", "--events", "1000",
                             "--hang-after", "500"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().split() == ["READY", "1000"]
        header, records, _ = read_ring(path)
        assert (header["state"], header["writers"]["emitted"].sum(), len(records)) == (STATE_OPEN, 1000, 1000)
        assert np.count_nonzero(header["blocks"] & np.uint64(BLOCK_OPEN)) == 2  # the hanging threads' blocks
    finally:
        proc.kill()
        proc.wait(10)
    header, _, _ = read_ring(path)
    assert (header["state"], header["crash_signal"]) == (STATE_OPEN, 0)


def test_library_opens_lazily_from_the_environment_and_marks_closed_at_exit(tmp_path):
    path = tmp_path / "lazy.ring"
    out, stderr = run_library_client(tmp_path, "lazy", env={**os.environ, "GPUSCOPE_RING": str(path)})
    assert stderr == ""
    assert out == {"devices": [0, 1, 0], "path": str(path), "same": True, "bounded": True, "empty": 0}

    header, records, strings = read_ring(path)
    assert header["state"] == STATE_CLOSED
    assert header["capacity"] == 1 << 20 and header["strings_capacity"] == 1 << 20  # the defaults
    assert header["n_devices"] == 2
    assert [strings[i] for i in header["device_names"][:2]] == ["CUDA0", "CPU"]
    assert header["device_names"][2:] == [0] * 62
    assert sorted(strings.values()) == sorted(["", "CUDA0", "CPU", "blk.0.attn_q", "blk.0", "hello"])
    (record,) = records
    assert (number_of(record["seq"]), record["kind"], record["device"], record["value"], record["value2"]) == \
           (1, 1, 1, 7, 8)
    assert strings[record["name"]] == "hello"


def test_library_reopen_close_and_a_full_string_section(tmp_path):
    first, second = tmp_path / "first.ring", tmp_path / "second.ring"
    out, _ = run_library_client(tmp_path, "reopen", str(first), str(second), str(tmp_path / "missing" / "x.ring"))
    assert out["open_first"] == 0 and out["open_second"] == 0
    assert out["path_after_close"] is None
    assert (out["intern_after_close"], out["device_after_close"]) == (0, -1)
    assert out["open_missing_dir"] == -errno.ENOENT
    assert out["open_first_again"] == -errno.EEXIST  # not even its own earlier ring is opened again

    header, _, strings = read_ring(first)  # opening the second ring closed the first
    assert header["state"] == STATE_CLOSED
    assert header["strings_capacity"] == 4096  # 1 byte asked, one page given
    assert 0 < out["interned"] == len(strings) - 1 < 2000
    assert header["strings_dropped"] == 2000 - out["interned"]
    assert header["strings_capacity"] - header["strings_used"] < 16  # refused only when nothing fits
    assert read_ring(second)[0]["state"] == STATE_CLOSED


def test_builds_are_cached_and_compiler_errors_are_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUSCOPE_CACHE", str(tmp_path / "cache"))
    library = native.ring_library()
    assert library.is_relative_to(tmp_path / "cache") and os.access(library, os.X_OK)
    built_at = library.stat().st_mtime_ns
    assert native.ring_library() == library and library.stat().st_mtime_ns == built_at

    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\necho 'no compiler here today' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    with pytest.raises(NativeBuildError, match="no compiler here today"):
        native.ring_tool("gpuscope-ring-bench")
    assert not any(p.name.startswith(".") for p in (tmp_path / "cache").rglob("*")), "temporary file left behind"
