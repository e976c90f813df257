"""The Python reader against the real C writer: concurrent producers, killed and aborting writers."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from gpuscope.errors import RingVersionError
from gpuscope.ring import native
from gpuscope.ring.reader import CLOCK_BOUND_NS, RingReader
from gpuscope.ring.schema import load_schema
from ring_programs import check_marks, start_producer, wait_for_ring


def test_four_producers_live_drain_accounts_for_every_record(tmp_path):
    path = tmp_path / "live.ring"
    threads, per_thread, capacity = 4, 400_000, 1 << 12
    producer = start_producer(path, "--threads", str(threads), "--events", str(per_thread),
                              "--capacity", str(capacity))
    reader = wait_for_ring(path)
    batches = []
    while producer.poll() is None:
        batches.append(reader.drain())
    batches.append(reader.drain())
    out, err = producer.communicate()
    assert producer.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    status = reader.status
    marks = reader.decode(np.concatenate(batches))["mark"]
    reader.close()

    assert summary["written"] == threads * per_thread == status.written
    assert status.state == "closed"
    assert status.read + status.lost == status.written, status
    assert status.read == len(marks) > 0
    assert status.written > 100 * capacity  # wrapped many times over
    check_marks(marks, threads)


def test_late_reader_counts_overwritten_records_exactly(tmp_path):
    path = tmp_path / "late.ring"
    capacity = 1 << 12
    producer = start_producer(path, "--threads", "2", "--events", "50000", "--capacity", str(capacity))
    assert producer.wait(60) == 0
    with RingReader(path) as reader:
        marks = reader.read_all()["mark"]
        status = reader.status
    assert status.written == 100_000
    # the ring is full but for the unfilled rest of each thread's last block
    assert status.read == len(marks) and capacity - 2 * reader.header.block_records <= len(marks) <= capacity
    assert reader.header.block_records == 256  # capacity / 16
    assert status.lost == status.written - status.read
    check_marks(marks, 2)
    # the survivors are each thread's newest records
    values = marks["value"].to_numpy(np.int64)
    for _, counters in pd.Series(values & ((1 << 40) - 1)).groupby(values >> 40):
        assert counters.max() == 49_999 and counters.is_monotonic_increasing
        assert counters.max() - counters.min() + 1 == len(counters)


def test_sigkill_mid_stream_keeps_every_committed_record(tmp_path):
    path = tmp_path / "killed.ring"
    producer = start_producer(path, "--threads", "4", "--events", "10000000", "--capacity", str(1 << 22),
                              "--pace-ns", "2000")
    reader = wait_for_ring(path)
    while reader.status.written < 20_000:
        time.sleep(0.01)
    producer.send_signal(signal.SIGKILL)
    producer.wait()
    status = reader.status
    marks = reader.read_all()["mark"]
    status = reader.status
    reader.close()
    assert status.state == "exited"
    assert status.read + status.lost == status.written
    assert status.lost <= 4  # at most one record in flight per producer thread
    check_marks(marks, 4)


def test_sigkill_after_quiet_writer_loses_nothing(tmp_path):
    path = tmp_path / "hung.ring"
    producer = start_producer(path, "--threads", "2", "--events", "100000", "--hang-after", "5000",
                              "--capacity", str(1 << 16))
    line = producer.stdout.readline()
    assert line.startswith("READY"), line
    producer.send_signal(signal.SIGKILL)
    producer.wait()
    with RingReader(path) as reader:
        marks = reader.read_all()["mark"]
        status = reader.status
    assert status.state == "exited"
    assert status.written == status.read == len(marks) == 10_000
    assert status.lost == 0
    check_marks(marks, 2)


def test_abort_marks_ring_crashed_and_keeps_records(tmp_path):
    path = tmp_path / "aborted.ring"
    producer = start_producer(path, "--threads", "4", "--events", "1000000", "--abort-after", "30000",
                              "--capacity", str(1 << 22))
    producer.communicate()
    assert producer.returncode == -signal.SIGABRT
    with RingReader(path) as reader:
        marks = reader.read_all()["mark"]
        status = reader.status
    assert status.state == "crashed"
    assert status.crash_signal == signal.SIGABRT
    assert status.read + status.lost == status.written
    assert status.lost <= 4
    assert (marks["value"].to_numpy() >> 40 == 0).sum() == 30_000  # thread 0 wrote exactly K before abort()
    check_marks(marks, 4)


def test_live_status_while_writer_runs(tmp_path):
    path = tmp_path / "alive.ring"
    producer = start_producer(path, "--threads", "1", "--events", "1000", "--hang-after", "1000")
    assert producer.stdout.readline().startswith("READY")
    try:
        with RingReader(path) as reader:
            assert reader.status.state == "alive"
            assert reader.status.pid == producer.pid
            assert len(reader.drain()) == 1000
            assert len(reader.drain()) == 0  # nothing twice
    finally:
        producer.kill()
        producer.wait()


@pytest.mark.parametrize("bad", [b"", b"hello, not a ring\n" * 10, b"\0" * 4096, b"\xff" * 8192],
                         ids=["empty", "text", "zeros", "ones"])
def test_non_ring_files_raise_clear_errors(tmp_path, bad):
    from gpuscope.errors import NotARingError, RingError

    path = tmp_path / "bad.ring"
    path.write_bytes(bad)
    with pytest.raises(RingError) as info:
        RingReader(path)
    assert str(path) in str(info.value)
    if len(bad) < 4096:
        assert isinstance(info.value, NotARingError)


def test_missing_file(tmp_path):
    from gpuscope.errors import NotARingError

    with pytest.raises(NotARingError, match="no such ring"):
        RingReader(tmp_path / "nope.ring")


CLOCK_CLIENT = """
import ctypes, sys, time

class Mark(ctypes.Structure):
    _fields_ = [("value", ctypes.c_int64), ("value2", ctypes.c_int64),
                ("name", ctypes.c_uint32), ("label", ctypes.c_uint32)]

lib = ctypes.CDLL(sys.argv[1])
lib.gpuscope_ring_open.argtypes = [ctypes.c_char_p, ctypes.c_uint64, ctypes.c_uint64]
lib.gpuscope_emit_slow.argtypes = [ctypes.c_uint16, ctypes.c_int16, ctypes.c_void_p, ctypes.c_size_t]
assert lib.gpuscope_ring_open(sys.argv[2].encode(), 1 << 16, 0) == 0
mark = Mark()
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:  # across several calibration pairs (one every 250 ms)
    mark.value = time.monotonic_ns()
    lib.gpuscope_emit_slow(1, -1, ctypes.byref(mark), ctypes.sizeof(mark))
    mark.value2 = time.monotonic_ns()
    lib.gpuscope_emit_slow(1, -1, ctypes.byref(mark), ctypes.sizeof(mark))
    time.sleep(0.0002)
if sys.argv[4] == "kill":
    import os, signal
    os.kill(os.getpid(), signal.SIGKILL)  # no closing pair: the newest records lie past the last one
lib.gpuscope_ring_close()
"""


@pytest.mark.parametrize("ending", ["close", "kill"])
def test_timestamps_agree_with_clock_monotonic_within_the_stated_bound(tmp_path, ending):
    """Every record's timestamp, converted from TSC ticks where the ring uses them, lies between the
    CLOCK_MONOTONIC readings taken just before and just after its emit, give or take CLOCK_BOUND_NS."""
    path = tmp_path / "clock.ring"
    subprocess.run([sys.executable, "-c", CLOCK_CLIENT, str(native.ring_library()), str(path), "0.8", ending],
                   timeout=60)
    with RingReader(path) as reader:
        marks = reader.read_all()["mark"]
        pairs = len(reader._clock_pairs)
    stamps = marks["ts_ns"].to_numpy(np.int64)
    values, values2 = marks["value"].to_numpy(np.int64), marks["value2"].to_numpy(np.int64)
    # records come in pairs around the readings: t0 <= first record <= t1 <= second record <= next pair's t0
    n = stamps.size // 2 * 2 - 2
    first, second = stamps[0:n:2], stamps[1:n:2]
    t0, t1, next_t0 = values[0:n:2], values2[1:n:2], values[2:n + 2:2]
    error = np.maximum.reduce([t0 - first, first - t1, t1 - second, second - next_t0])
    assert n > 2000 and (pairs >= 3 or reader.header.clock == "monotonic")
    assert (np.diff(stamps) >= 0).all()


def test_a_ring_of_an_older_abi_is_refused_with_both_versions(tmp_path):
    """An ABI 2 ring (one shared cursor, CLOCK_MONOTONIC stamps) would be misread record by record: refused."""
    path = tmp_path / "old.ring"
    assert start_producer(path, "--threads", "1", "--events", "10").wait(60) == 0
    data = bytearray(path.read_bytes())
    version = load_schema().structs["gpuscope_ring_header"].fields[1]
    assert version.name == "abi_version"
    data[version.offset:version.offset + 4] = (2).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(RingVersionError, match="written by ring ABI version 2, this gpuscope reads version 3"):
        RingReader(path)
