"""A program for tests/test_record.py that emits through a hooked engine build's ggml-base, as the engine does.

    python3 record_emitter.py LIBGGML_BASE READY_FILE [--ticks N] [--ignore-stops]

Emits a `start` mark (value: its pid), touches READY_FILE, then a `tick` mark (value: 0, 1, 2, ...) every 10 ms,
N ticks or until SIGINT, SIGTERM or SIGHUP. On a stop signal it waits half a second (a second copy of the signal, if
one was sent, arrives meanwhile) and emits a `stop` mark: value the first signal, value2 how many stop signals it got.
With --ignore-stops it counts them and goes on ticking.
"""
import argparse
import ctypes
import os
import signal
import time
from pathlib import Path


class Mark(ctypes.Structure):
    _fields_ = [("value", ctypes.c_int64), ("value2", ctypes.c_int64),
                ("name", ctypes.c_uint32), ("label", ctypes.c_uint32)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("library")
    parser.add_argument("ready")
    parser.add_argument("--ticks", type=int, default=None)
    parser.add_argument("--ignore-stops", action="store_true")
    args = parser.parse_args()

    lib = ctypes.CDLL(args.library)
    lib.gpuscope_intern.restype = ctypes.c_uint32
    lib.gpuscope_emit_slow.argtypes = [ctypes.c_uint16, ctypes.c_int16, ctypes.c_void_p, ctypes.c_size_t]

    def emit(name: bytes, value: int, value2: int = 0) -> None:
        mark = Mark(value, value2, lib.gpuscope_intern(name), 0)
        lib.gpuscope_emit_slow(1, -1, ctypes.byref(mark), ctypes.sizeof(mark))

    stops: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda number, frame: stops.append(number))
    emit(b"start", os.getpid())
    Path(args.ready).touch()
    tick = 0
    while (args.ignore_stops or not stops) and (args.ticks is None or tick < args.ticks):
        emit(b"tick", tick)
        tick += 1
        time.sleep(0.01)
    if stops:
        time.sleep(0.5)
        emit(b"stop", stops[0], len(stops))


if __name__ == "__main__":
    main()
