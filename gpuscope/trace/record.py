"""`gpuscope record`: run any program of a patched engine build with a fresh ring and turn its events into a trace.

The program finds the ring through $GPUSCOPE_RING and opens it on its first event. This process drains the ring
while the program runs (so a long run survives on a modest ring) and once more after it exits; if the program
dies, the records it committed before dying are all in the file, and the trace says how it died.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from gpuscope import __version__
from gpuscope.errors import GpuscopeError
from gpuscope.ring.reader import RingReader, open_when_ready
from gpuscope.trace.model import Trace, save_trace
from gpuscope.trace.model_bytes import command_model
from gpuscope.trace.standalone import standalone_meta

# The symbol every patched build exports from ggml-base (or from a static program itself).
_HOOK_SYMBOL = b"gpuscope_ring_open"
_DRAIN_INTERVAL_S = 0.05


class NotPatchedError(GpuscopeError):
    """The program does not carry gpuscope's hooks."""


def is_patched(program: Path) -> bool:
    """True when `program` or a ggml library it loads exports the hook symbol."""
    candidates = [program, *_linked_ggml_libraries(program)]
    return any(_HOOK_SYMBOL in path.read_bytes() for path in candidates if path.is_file())


def _linked_ggml_libraries(program: Path) -> list[Path]:
    try:
        out = subprocess.run(["ldd", str(program)], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    linked = [Path(line.split("=>")[1].split("(")[0].strip()) for line in out.splitlines()
              if "=>" in line and "ggml" in line and "not found" not in line]
    # libraries beside the program (our builds keep them together) also count when ldd cannot resolve them
    return linked + sorted(program.resolve().parent.glob("libggml-base.so*"))


def resolve_program(name: str) -> Path:
    found = shutil.which(name)
    if found is None:
        raise GpuscopeError(f"program not found: {name}")
    return Path(found).resolve()


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def how_it_ended(returncode: int) -> dict:
    if returncode < 0:
        return {"returncode": returncode, "signal": -returncode, "how": f"killed by {signal_name(-returncode)}"}
    return {"returncode": returncode, "signal": 0, "how": f"exited with status {returncode}"}


def ring_dir() -> Path:
    return Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(os.environ.get("TMPDIR", "/tmp"))


class RingCollector:
    """Drains one ring that a program creates lazily: waits for the file, keeps every committed record."""

    def __init__(self, path: Path):
        self.path = path
        self.reader: RingReader | None = None
        self.batches: list[np.ndarray] = []

    def poll(self) -> int:
        """Drain what is there now; returns the records taken."""
        if self.reader is None:
            self.reader = open_when_ready(self.path)
            if self.reader is None:
                return 0
        batch = self.reader.drain()
        if batch.size:
            self.batches.append(batch)
        return int(batch.size)

    def skip_existing(self) -> None:
        """Drop what the ring already holds: a session's trace starts when the session opens."""
        self.poll()
        self.batches.clear()

    def snapshot(self) -> tuple[dict, dict]:
        """Drain, then (tables, ring metadata) of everything kept so far; the writer may still be running."""
        self.poll()
        if self.reader is None:
            return {}, {"path": str(self.path), "opened": False}
        records = np.concatenate(self.batches) if self.batches else np.empty(0, self.reader.schema.record_dtype)
        status, header = self.reader.status, self.reader.header
        return self.reader.decode(records), {
            "path": str(self.path), "opened": True, "capacity": header.capacity, "pid": status.pid,
            "state": status.state, "crash_signal": status.crash_signal,
            "crash_signal_name": signal_name(status.crash_signal) if status.crash_signal else None,
            "written": status.written, "read": status.read, "lost": status.lost,
            "strings_dropped": status.strings_dropped, "writer_dropped": status.writer_dropped,
            "start_monotonic_ns": header.start_monotonic_ns, "start_realtime_ns": header.start_realtime_ns,
            "devices": self.reader.device_names(), "unknown_kinds": self.reader.unknown_kinds,
        }

    def finish(self) -> tuple[dict, dict]:
        """Final drain after the writer is gone: (tables, ring metadata); closes the reader."""
        tables, ring_meta = self.snapshot()
        if self.reader is not None:
            self.reader.close()
        return tables, ring_meta


def record(command: list[str], out: str | os.PathLike, *, capacity: int | None = None,
           keep_ring: bool = False, env: dict | None = None, quiet: bool = False, stdout=None) -> Trace:
    """Run `command` with a fresh ring, drain it live, and write the trace to `out`.

    `stdout` is passed to the program's Popen (None: inherit); the trace's meta keeps what it printed when it is
    subprocess.PIPE."""
    if not command:
        raise GpuscopeError("nothing to record: give a program after `--`")
    program = resolve_program(command[0])
    if not is_patched(program):
        raise NotPatchedError(
            f"{program} is not a program of a patched engine build (no gpuscope hooks in it or its ggml "
            "libraries): build one with `gpuscope engine build` and run the program from `gpuscope engine path`")
    ring_path = ring_dir() / f"gpuscope-record-{uuid.uuid4().hex[:12]}.ring"
    child_env = {**os.environ, **(env or {}), "GPUSCOPE_RING": str(ring_path)}
    if capacity:
        child_env["GPUSCOPE_RING_CAPACITY"] = str(capacity)
    collector = RingCollector(ring_path)
    started = time.time()
    if not quiet:
        print(f"gpuscope record: {shlex.join(command)}", file=sys.stderr)
    try:
        process = subprocess.Popen([str(program), *command[1:]], env=child_env, stdout=stdout, text=True)
        output = _PipeReader(process.stdout)
        try:
            while process.poll() is None:
                collector.poll()
                time.sleep(_DRAIN_INTERVAL_S)
        except KeyboardInterrupt:
            process.send_signal(signal.SIGINT)
            process.wait()
        tables, ring_meta = collector.finish()
    finally:
        if not keep_ring:
            ring_path.unlink(missing_ok=True)
    ended = how_it_ended(process.returncode)
    meta = {
        "gpuscope_version": __version__,
        "source": "record",
        "command": command,
        "program": str(program),
        "started_realtime_s": started,
        "duration_s": time.time() - started,
        "exit": ended,
        "ring": ring_meta,
        **standalone_meta(command_model(command), _engine_meta(program)),
    }
    if stdout == subprocess.PIPE:
        meta["stdout"] = output.text()
    trace = Trace(meta=meta, tables=tables)
    save_trace(trace, out)
    if not quiet:
        _summarize(trace)
    return trace


class _PipeReader:
    """Reads a child's piped output in a thread so the child never blocks on a full pipe."""

    def __init__(self, stream):
        import threading

        self._chunks: list[str] = []
        self._thread = None
        if stream is not None:
            self._thread = threading.Thread(target=lambda: self._chunks.extend(stream), daemon=True)
            self._thread.start()

    def text(self) -> str:
        if self._thread is not None:
            self._thread.join()
        return "".join(self._chunks)


def _engine_meta(program: Path) -> dict:
    """The build's own metadata when the program comes from a `gpuscope engine build` folder."""
    for folder in (program.parent, program.parent.parent):
        meta_file = folder / "gpuscope-build.json"
        if meta_file.is_file():
            return json.loads(meta_file.read_text())
    return {"program_dir": str(program.parent)}


def _summarize(trace: Trace) -> None:
    ring = trace.meta["ring"]
    counts = ", ".join(f"{kind} {len(frame)}" for kind, frame in sorted(trace.tables.items())) or "no events"
    print(f"gpuscope record: program {trace.meta['exit']['how']}", file=sys.stderr)
    if not ring.get("opened"):
        print("gpuscope record: the program never opened the ring (it emitted no event)", file=sys.stderr)
    else:
        print(f"gpuscope record: {ring['read']} events ({counts}); lost {ring['lost']}; ring {ring['state']}",
              file=sys.stderr)
    print(trace.path)


def _run(args) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    trace = record(command, args.out, capacity=args.capacity, keep_ring=args.keep_ring)
    return 0 if trace.meta["exit"]["returncode"] == 0 else 1


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "record", help="run a program of a patched engine build and write its events as a trace",
        description="Example: gpuscope record --out bench.trace -- llama-bench -m model.gguf -n 32")
    parser.add_argument("--out", "-o", required=True, help="trace folder to write")
    parser.add_argument("--capacity", type=int, default=None, help="ring capacity in records (power of two)")
    parser.add_argument("--keep-ring", action="store_true", help="keep the raw ring file after the run")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- PROGRAM ARGS...")
    parser.set_defaults(func=_run)
