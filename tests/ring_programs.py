"""The ring's real writers, run as tests need them: the standalone producer and a ctypes client of the library."""
from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd

from gpuscope.errors import RingError
from gpuscope.ring import native
from gpuscope.ring.reader import RingReader

CHECKSUM = np.uint64(0x9E3779B97F4A7C15)


def start_producer(path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([str(native.ring_tool("gpuscope-ring-producer")), "--path", str(path), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_ring(path, timeout: float = 10.0) -> RingReader:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return RingReader(path)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def wait_for(condition, timeout_s: float = 60.0, what: str = "the condition"):
    """The first true value of `condition()`, asked every 50 ms; an AssertionError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def check_marks(marks: pd.DataFrame, threads: int) -> None:
    """Producer records are whole (checksum), unique, and in each thread's own order."""
    values = marks["value"].to_numpy().astype(np.uint64)
    with np.errstate(over="ignore"):
        assert (marks["value2"].to_numpy().astype(np.uint64) == values * CHECKSUM).all(), "torn record"
    assert np.unique(values).size == values.size, "a record was read twice"
    thread = values >> np.uint64(40)
    assert set(np.unique(thread)) <= set(range(threads))
    for t in range(threads):
        counters = values[thread == t] & np.uint64((1 << 40) - 1)
        assert (np.diff(counters.astype(np.int64)) > 0).all()
    names = marks["name"].astype(str)
    assert (names == "producer-" + pd.Series(thread.astype(np.int64)).astype(str).to_numpy()).all()


LIBRARY_CLIENT = textwrap.dedent("""
    import ctypes, json, os, sys

    class Mark(ctypes.Structure):
        _fields_ = [("value", ctypes.c_int64), ("value2", ctypes.c_int64),
                    ("name", ctypes.c_uint32), ("label", ctypes.c_uint32)]

    lib = ctypes.CDLL(sys.argv[1])
    lib.gpuscope_intern.restype = ctypes.c_uint32
    lib.gpuscope_intern_n.restype = ctypes.c_uint32
    lib.gpuscope_intern_n.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    lib.gpuscope_device.restype = ctypes.c_int16
    lib.gpuscope_ring_path.restype = ctypes.c_char_p
    lib.gpuscope_ring_open.argtypes = [ctypes.c_char_p, ctypes.c_uint64, ctypes.c_uint64]
    lib.gpuscope_emit_slow.argtypes = [ctypes.c_uint16, ctypes.c_int16, ctypes.c_void_p, ctypes.c_size_t]
    out = {}
    if sys.argv[2] == "lazy":
        # No open call: the first use opens $GPUSCOPE_RING; exiting without close must mark it closed.
        out["devices"] = [lib.gpuscope_device(n) for n in (b"CUDA0", b"CPU", b"CUDA0")]
        path = lib.gpuscope_ring_path()
        out["path"] = path.decode() if path else None
        out["same"] = lib.gpuscope_intern(b"blk.0.attn_q") == lib.gpuscope_intern(b"blk.0.attn_q")
        out["bounded"] = lib.gpuscope_intern_n(b"blk.0.attn_q", 5) == lib.gpuscope_intern(b"blk.0")
        out["empty"] = lib.gpuscope_intern(b"")
        mark = Mark(7, 8, lib.gpuscope_intern(b"hello"), 0)
        lib.gpuscope_emit_slow(1, out["devices"][1], ctypes.byref(mark), ctypes.sizeof(mark))
    else:
        first, second = sys.argv[3].encode(), sys.argv[4].encode()
        out["open_first"] = lib.gpuscope_ring_open(first, 16, 1)
        ids = [lib.gpuscope_intern(b"name-%d" % i) for i in range(2000)]
        out["interned"] = sum(1 for i in ids if i)
        out["open_second"] = lib.gpuscope_ring_open(second, 16, 0)
        lib.gpuscope_ring_close()
        out["path_after_close"] = lib.gpuscope_ring_path()
        out["intern_after_close"] = lib.gpuscope_intern(b"late")
        out["device_after_close"] = lib.gpuscope_device(b"CPU")
        out["open_missing_dir"] = lib.gpuscope_ring_open(sys.argv[5].encode(), 16, 0)
        out["open_first_again"] = lib.gpuscope_ring_open(first, 16, 0)
    print(json.dumps(out))
""")


def run_library_client(tmp_path, *args: str, env: dict | None = None) -> tuple[dict, str]:
    """Run the library client; (what it printed, its standard error)."""
    script = tmp_path / "client.py"
    script.write_text(LIBRARY_CLIENT)
    done = subprocess.run([sys.executable, str(script), str(native.ring_library()), *args],
                          capture_output=True, text=True, timeout=60, check=True, env=env)
    return json.loads(done.stdout), done.stderr


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail with TimeoutError instead of hanging when the block runs past `seconds` (main thread only)."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def read_everything(path) -> str:
    """Read a ring every way the package does; 'data' (with exact accounting) or 'ring error'. Anything else
    raises: that is the bug a fuzzer looks for."""
    with deadline(20):
        try:
            with RingReader(path) as reader:
                batches = [reader.drain(max_records=reader.header.capacity // 3 + 1), reader.drain()]
                status = reader.status
                tables = reader.decode(np.concatenate(batches))
                reader.device_names()
        except RingError:
            return "ring error"
    # No writer holds these rings: every ticket handed out was either read or counted lost.
    assert status.read + status.lost == status.written, status
    assert status.read == sum(len(frame) for frame in tables.values()) + sum(reader.unknown_kinds.values())
    return "data"
