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

import numpy as np
import pytest

from gpuscope.errors import NativeBuildError
from gpuscope.ring import native
from ring_programs import run_library_client

MAGIC = 0x45504F4353555047
STATE_OPEN, STATE_CLOSED, STATE_CRASHED = 1, 2, 3
SEQ_BUSY = 1 << 63
CHECKSUM = 0x9E3779B97F4A7C15
KIND_MARK = 1

# gpuscope_ring_header, field by field (every field naturally aligned, so no padding).
HEADER_FIELDS = [
    ("magic", "Q"), ("abi_version", "I"), ("header_size", "I"), ("record_size", "I"), ("payload_size", "I"),
    ("capacity", "Q"), ("strings_offset", "Q"), ("strings_capacity", "Q"), ("records_offset", "Q"),
    ("file_size", "Q"), ("start_monotonic_ns", "q"), ("start_realtime_ns", "q"), ("writer_pid", "i"),
    ("state", "I"), ("crash_signal", "i"), ("n_devices", "I"), ("write_cursor", "Q"), ("strings_used", "Q"),
    ("strings_dropped", "Q"), ("writer_dropped", "Q"),
]
HEADER_STRUCT = struct.Struct("<" + "".join(code for _, code in HEADER_FIELDS) + "64I")

# A record carrying a gpuscope_ev_mark payload (24 bytes used of 40).
MARK_RECORD = np.dtype([
    ("seq", "<u8"), ("ts_ns", "<u8"), ("kind", "<u2"), ("device", "<i2"), ("tid", "<u4"),
    ("value", "<i8"), ("value2", "<i8"), ("name", "<u4"), ("label", "<u4"), ("pad", "V16"),
])


def read_ring(path) -> tuple[dict, np.ndarray, dict[int, str]]:
    """Header fields, all record slots, and the string section as {id: text}."""
    data = path.read_bytes()
    values = HEADER_STRUCT.unpack_from(data)
    header = dict(zip((name for name, _ in HEADER_FIELDS), values))
    header["device_names"] = list(values[len(HEADER_FIELDS):])
    records = np.frombuffer(data, MARK_RECORD, count=header["capacity"], offset=header["records_offset"])
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
           (2, 4096, 64, 40)
    assert header["capacity"] == 1024  # rounded up to a power of two
    assert header["strings_offset"] == 4096
    assert header["records_offset"] == header["strings_offset"] + header["strings_capacity"]
    assert header["records_offset"] % 64 == 0
    assert header["file_size"] == header["records_offset"] + 1024 * 64 == path.stat().st_size
    assert header["writer_pid"] > 0 and header["start_monotonic_ns"] > 0 and header["start_realtime_ns"] > 0
    assert (header["state"], header["crash_signal"]) == (STATE_CLOSED, 0)
    assert header["write_cursor"] == summary["written"] == threads * events
    assert header["writer_dropped"] == summary["writer_dropped"]
    assert header["strings_dropped"] == 0 and header["n_devices"] == 0

    # Strings: the reserved empty entry at id 0, then each producer name once despite racing threads.
    assert strings[0] == ""
    assert sorted(strings.values()) == ["", "producer-0", "producer-1"]
    name_ids = {text: sid for sid, text in strings.items()}

    # Every slot is committed (the writers are gone) and sits where its ticket says.
    seq = records["seq"]
    assert not (seq & np.uint64(SEQ_BUSY)).any() and (seq > 0).all()
    tickets = seq - np.uint64(1)
    assert (tickets % np.uint64(1024) == np.arange(1024, dtype=np.uint64)).all()
    cursor = header["write_cursor"]
    assert (tickets < cursor).all()
    # Only a record a lapped or blocked producer gave up leaves an older ticket behind.
    assert int((tickets >= cursor - 1024).sum()) >= 1024 - header["writer_dropped"]

    values = records["value"].astype(np.uint64)
    with np.errstate(over="ignore"):
        assert (records["value2"].astype(np.uint64) == values * np.uint64(CHECKSUM)).all(), "torn record"
    assert (records["kind"] == KIND_MARK).all() and (records["device"] == -1).all()
    assert (records["label"] == 0).all() and records["pad"].tobytes() == bytes(16 * 1024)
    thread = (values >> np.uint64(40)).astype(np.int64)
    present = set(thread.tolist())  # the last lap may hold only the thread that finished last
    assert present <= {0, 1}
    for t in present:
        mine = np.argsort(tickets[thread == t])
        counters = (values[thread == t] & np.uint64((1 << 40) - 1))[mine]
        stamps = records["ts_ns"][thread == t][mine]
        assert (np.diff(counters.astype(np.int64)) > 0).all() and counters.max() < events
        assert (np.diff(stamps.astype(np.int64)) >= 0).all()
        assert (records["name"][thread == t] == name_ids[f"producer-{t}"]).all()
        assert np.unique(records["tid"][thread == t]).size == 1
    assert np.unique(records["tid"]).size == len(present)
    assert (records["ts_ns"] >= header["start_monotonic_ns"]).all()


def test_abort_marks_the_ring_crashed_and_keeps_what_was_written(producer, tmp_path):
    path = tmp_path / "abort.ring"
    done = subprocess.run([producer, "--path", str(path), "--threads", "2", "--events", "50000",
                           "--capacity", str(1 << 17), "--abort-after", "1000"],
                          capture_output=True, text=True, timeout=60, preexec_fn=no_core_dumps)
    assert done.returncode == -signal.SIGABRT  # the default action still ran after the ring was marked
    header, records, _ = read_ring(path)
    assert (header["state"], header["crash_signal"]) == (STATE_CRASHED, signal.SIGABRT)
    assert header["writer_dropped"] == 0
    committed = records[(records["seq"] > 0) & (records["seq"] <= header["write_cursor"])]
    thread0 = np.sort(committed["value"][committed["value"] >> 40 == 0])
    assert (thread0 == np.arange(1000)).all()


def test_killed_writer_leaves_the_ring_open(producer, tmp_path):
    path = tmp_path / "killed.ring"
    proc = subprocess.Popen([producer, "--path", str(path), "--threads", "2", "--events", "1000",
                             "--hang-after", "500"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().split() == ["READY", "1000"]
        header, _, _ = read_ring(path)
        assert (header["state"], header["write_cursor"]) == (STATE_OPEN, 1000)
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
    (record,) = records[records["seq"] > 0]
    assert (record["seq"], record["kind"], record["device"], record["value"], record["value2"]) == (1, 1, 1, 7, 8)
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
