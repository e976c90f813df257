"""`gpuscope record`: run a program on a hooked engine and write its events as a trace (gpuscope.runs.record)."""
from __future__ import annotations

import argparse
from pathlib import Path

from gpuscope.runs.record import RecordError, record, say, summarize
from gpuscope.trace.recover import recover_ring


def _run(args) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.from_ring is not None:
        if command:
            raise RecordError("--from-ring makes a trace of a ring that exists: give no program with it")
        trace, added = recover_ring(args.from_ring, args.out, keep_ring=args.keep_ring)
        say(f"gpuscope record: {added} events from {args.from_ring}")
        summarize(trace)
        return 0
    trace = record(command, args.out, capacity=args.capacity, keep_ring=args.keep_ring, engine=args.engine)
    return 0 if trace.meta["exit"]["returncode"] == 0 else 1


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "record", help="run a program on a hooked engine build and write its events as a trace",
        description="Examples: gpuscope record --out bench.trace -- llama-bench -m model.gguf -n 32; "
                    "gpuscope record --engine cpu --out py.trace -- python3 script.py (llama-cpp-python); "
                    "gpuscope record --from-ring /dev/shm/x.ring --out x.trace")
    parser.add_argument("--out", "-o", required=True, help="trace folder to write (rewritten as the run goes)")
    parser.add_argument("--capacity", type=int, default=None, help="ring capacity in records (power of two)")
    parser.add_argument("--keep-ring", action="store_true", help="keep the raw ring file after the run")
    parser.add_argument("--engine", metavar="NAME", help="engine build (`gpuscope engine list`) that the program's "
                        "llama-cpp-python loads (sets LLAMA_CPP_LIB_PATH, LD_LIBRARY_PATH and PATH)")
    parser.add_argument("--from-ring", metavar="RING", type=Path,
                        help="make the trace of a ring left behind (by a killed recorder, or --keep-ring)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- PROGRAM ARGS...")
    parser.set_defaults(func=_run)
