"""`gpuscope record`: run a program with a fresh ring and turn the events its hooks emit into a trace.

The program runs as given: a hooked build's llama-server, a Python script whose llama-cpp-python loads a hooked build
(`--engine NAME` points it there), a virtualenv's interpreter. It finds the ring through $GPUSCOPE_RING, which its
hooks open on their first event, so whether it runs a hooked engine at all shows in what it emits: nothing by the
end (or for the first seconds) gives a warning that says how to fix it. This process drains the ring while the program
runs (so a long run survives on a modest ring), rewrites the trace every few seconds (always complete on disk, see
recover.py) and once more after the program exits; if the program dies, the records it committed before dying are
all in the file, and the trace says how it died.

SIGINT, SIGTERM and SIGHUP to the recorder stop the program: the program gets the signal once, the recorder waits for
it, drains the ring and writes the trace marked interrupted; a second signal kills the program (SIGKILL) once what
was read is saved. The program runs in a process group of its own, so a signal sent to the recorder's whole group
(timeout(1), a CI runner, `kill -- -PGID`) reaches it only through the recorder, which forwards it once to that group.
The exception is a recorder in the foreground of a terminal: there the program stays in the recorder's group, as it
must to read the terminal and to stop and go on with it (Ctrl-Z). The terminal sends Ctrl-C to that whole group, and
the shell that owns the terminal resends a hangup to it, so the recorder does not forward those a second time (only
a recorder that leads the terminal's session itself, as under `ssh -t`, gets the hangup alone, and forwards it). The
program dies with the recorder (PR_SET_PDEATHSIG): never an orphan.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from gpuscope.engine.build import find_build
from gpuscope.errors import GpuscopeError, RingError
from gpuscope.ring.schema import load_schema
from gpuscope.session.load import load_since, snapshot
from gpuscope.session.processes import die_with_parent, how_it_ended
from gpuscope.trace.model import Trace
from gpuscope.trace.model_bytes import command_model
from gpuscope.trace.recover import COMPLETE, IN_PROGRESS, check_trace_path, claim, publish, recover_abandoned, release
from gpuscope.trace.ringtap import RingTap, ring_dir, signal_name
from gpuscope.trace.standalone import program_engine_meta, standalone_meta
from gpuscope.version import __version__

_DRAIN_INTERVAL_S = 0.05
# The trace on disk is rewritten this often while the program runs. A rewrite costs time in proportion to the events
# kept, so the interval grows with it: rewriting takes at most a tenth of the recorder's time.
_FLUSH_INTERVAL_S = 2.0
_FLUSH_SHARE = 0.1
# A hooked engine emits its first events (devices, buffers) while it loads a model: nothing by then means no hooks.
_SILENT_WARNING_S = 10.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# The same signal again this soon is the same request sent twice: timeout(1) and CI runners signal the recorder and
# then its whole process group, the recorder included. Only a later one means "kill it".
_REPEAT_WINDOW_S = 0.5
_RING_PREFIX = "gpuscope-record-"


class RecordError(GpuscopeError):
    """`gpuscope record` was asked for something it cannot do (no program, a bad capacity)."""


def check_capacity(capacity: int | None) -> None:
    """Refuse, before anything runs, a ring capacity the writer would not create (it falls back to its default) or
    that does not fit the ring folder (the writer dies with SIGBUS when a page of its ring cannot be had)."""
    if capacity is None:
        return
    constants = load_schema().constants
    limit = constants["GPUSCOPE_MAX_CAPACITY"]
    if not 0 < capacity <= limit:
        raise RecordError(f"--capacity {capacity}: give a number of records from 1 to {limit} "
                          f"(default {constants['GPUSCOPE_DEFAULT_CAPACITY']})")
    ring_bytes = (1 << (capacity - 1).bit_length()) * constants["GPUSCOPE_RECORD_SIZE"]
    free = shutil.disk_usage(ring_dir()).free
    if ring_bytes > free:
        raise RecordError(f"--capacity {capacity}: the ring would take {ring_bytes / 2**30:.1f} GiB and "
                          f"{ring_dir()} has {free / 2**30:.1f} GiB free")


def locate_program(name: str, search_path: str | None) -> str:
    """Where PATH finds the program, to refuse a missing one and to name it in the trace. It is run as given: a
    virtualenv's `python` is a symlink whose resolved path runs without the virtualenv's packages."""
    found = shutil.which(name, path=search_path)
    if found is None:
        raise RecordError(f"program not found: {name}")
    return found


def engine_environment(name: str, env: dict) -> tuple[dict, dict]:
    """(variables, build meta) that make a program run the engine build called `name`: llama-cpp-python loads its
    libllama (LLAMA_CPP_LIB_PATH), the loader finds its ggml libraries and the shell its programs."""
    build = find_build(name)
    folder = str(build.bin_dir)

    def prepend(variable: str) -> str:
        return os.pathsep.join([folder, *([env[variable]] if env.get(variable) else [])])

    return {"LLAMA_CPP_LIB_PATH": folder, "LD_LIBRARY_PATH": prepend("LD_LIBRARY_PATH"),
            "PATH": prepend("PATH")}, build.meta


def no_events_advice(command: list[str], waited_s: float | None = None) -> str:
    when = f"in its first {waited_s:.0f} s" if waited_s else "at all"
    return (f"warning: {command[0]} emitted no gpuscope event {when}: it does not run a hooked engine build. Run a "
            "program of one (`gpuscope engine path` names its folder), point llama-cpp-python at one "
            "(LLAMA_CPP_LIB_PATH=<that folder>), or let record do it: `gpuscope record --engine NAME -- ...`")


def record(command: list[str], out: str | os.PathLike, *, capacity: int | None = None, keep_ring: bool = False,
           env: dict | None = None, engine: str | None = None, quiet: bool = False, stdout=None) -> Trace:
    """Run `command` with a fresh ring, drain it live, and write the trace to `out` (rewritten as the run goes).

    `engine`: the name of an engine build the program's llama-cpp-python (and dynamic loader, and PATH) should use.
    `stdout` is passed to the program's Popen (None: inherit); the trace's meta keeps what it printed when it is
    subprocess.PIPE."""
    if not command:
        raise RecordError("nothing to record: give a program after `--`")
    check_capacity(capacity)
    out = check_trace_path(out)
    child_env = {**os.environ, **(env or {})}
    engine_meta = None
    if engine is not None:
        engine_env, engine_meta = engine_environment(engine, child_env)
        child_env.update(engine_env)
    program = locate_program(command[0], child_env.get("PATH"))
    recover_abandoned(ring_dir(), _RING_PREFIX, quiet=quiet)
    ring_path = ring_dir() / f"{_RING_PREFIX}{uuid.uuid4().hex[:12]}.ring"
    child_env["GPUSCOPE_RING"] = str(ring_path)
    if capacity:
        child_env["GPUSCOPE_RING_CAPACITY"] = str(capacity)
    run = _Recording(command, program, out, ring_path, engine_meta or program_engine_meta(program, child_env), quiet)
    claim(ring_path, out, command)
    process = trace = None
    try:
        with _StopSignals() as stops:
            run.save_progress(check=True)  # the first trace, before the program starts: `out` is known writable
            run.say(f"gpuscope record: {shlex.join(command)}")
            process, output = run.start(child_env, stdout)
            try:
                run.watch(process, stops)
            finally:
                if process.poll() is None:  # the recorder itself failed: the program does not outlive it
                    run.signal_program(process, signal.SIGKILL)
                    process.wait()
            trace = run.finish(process.returncode, output.text() if stdout == subprocess.PIPE else None)
    finally:
        # a trace not written keeps its claim: the next `gpuscope record` finishes the trace from the ring
        if trace is not None or process is None:
            release(ring_path, keep_ring=keep_ring)
    return trace


class _Recording:
    """One program under the recorder: its ring, the trace written as the run goes, and how the run ended."""

    def __init__(self, command: list[str], program: str, out: Path, ring_path: Path, engine_meta: dict,
                 quiet: bool):
        self.command, self.out, self.quiet = command, out, quiet
        self.tap = RingTap(ring_path)
        self.started = time.time()
        self._load_from = snapshot()  # what else runs on the machine while the program is recorded
        self.meta = {
            "gpuscope_version": __version__, "source": "record", "command": command, "program": program,
            "started_realtime_s": self.started, "duration_s": 0.0, "exit": None,
            "ring": {"path": str(ring_path), "opened": False},
            **standalone_meta(command_model(command), engine_meta),
            "recording": {"state": IN_PROGRESS, "recorder_pid": os.getpid()},
        }
        self.interrupted: dict | None = None
        self._first_stop = 0.0  # when the first stop signal came
        self.own_group = not _owns_terminal_foreground()
        # the signals a program in the recorder's group got from the terminal (or its shell) already
        self.sent_to_program_too = set() if self.own_group else {signal.SIGINT} | (
            {signal.SIGHUP} if os.getsid(0) != os.getpid() else set())
        self._flushed_at, self._flush_cost, self._flushed_read = time.monotonic(), 0.0, 0
        self._warned = False
        self.ring_error: str | None = None

    # -- running ----------------------------------------------------------------------------------------------

    def start(self, env: dict, stdout) -> tuple[subprocess.Popen, _PipeReader]:
        try:
            process = subprocess.Popen(self.command, env=env, stdout=stdout, text=True, preexec_fn=die_with_parent,
                                       process_group=0 if self.own_group else None)
        except OSError as exc:
            raise RecordError(f"cannot run {self.command[0]}: {exc.strerror}") from None
        return process, _PipeReader(process.stdout)

    def watch(self, process: subprocess.Popen, stops: _StopSignals) -> None:
        while process.poll() is None:
            self._drain()
            for signum, when in stops.take():
                self._stop(process, signum, when)
            if time.monotonic() - self._flushed_at >= max(_FLUSH_INTERVAL_S, self._flush_cost / _FLUSH_SHARE):
                self.save_progress()
            silent = self.tap.reader is None and self.ring_error is None
            if silent and not self._warned and time.time() - self.started > _SILENT_WARNING_S:
                self._warned = True
                self.say(f"gpuscope record: {no_events_advice(self.command, _SILENT_WARNING_S)}")
            time.sleep(_DRAIN_INTERVAL_S)
        for signum, when in stops.take():  # came while the program ended (a Ctrl-C it got too, and obeyed at once)
            self._stop(process, signum, when)

    def _stop(self, process: subprocess.Popen, signum: int, when: float) -> None:
        """First signal: pass it on (unless the terminal sent it to the program too); second: save, then kill."""
        name, running = signal_name(signum), process.poll() is None
        if self.interrupted is None:
            self._first_stop = when
            forwarded = running and signum not in self.sent_to_program_too
            if forwarded:
                self.signal_program(process, signum)
            self.interrupted = {"signal": signum, "signal_name": name, "forwarded": forwarded, "killed": False}
            if running:
                self.say(f"gpuscope record: {name}: waiting for the program to stop (again: kill it)")
        elif running and not self.interrupted["killed"] and not (signum == self.interrupted["signal"]
                                                                 and when - self._first_stop < _REPEAT_WINDOW_S):
            self.save_progress()
            self.signal_program(process, signal.SIGKILL)
            self.interrupted.update(killed=True, second_signal=signum, second_signal_name=name)
            self.say(f"gpuscope record: {name} again: killed the program (SIGKILL)")

    def _drain(self) -> None:
        """Take what the program committed; a ring that turns out unreadable stops the reading, not the program."""
        if self.ring_error is not None:
            return
        try:
            self.tap.poll()
        except RingError as exc:
            self.ring_error = str(exc)
            self.say(f"gpuscope record: stopped reading the ring: {exc}")

    def signal_program(self, process: subprocess.Popen, signum: int) -> None:
        try:
            if self.own_group:
                os.killpg(process.pid, signum)  # its group: what the program started stops with it
            else:
                process.send_signal(signum)
        except ProcessLookupError:
            pass

    # -- writing the trace --------------------------------------------------------------------------------------

    def save_progress(self, check: bool = False) -> None:
        """Rewrite the trace with what was read so far. A failure mid-run is reported and retried later (the events
        are still here and in the ring); `check`: the first write, whose failure stops the recording."""
        reader = self.tap.reader
        if not check and (reader is None or reader.read == self._flushed_read):
            self._flushed_at = time.monotonic()
            return
        began = time.monotonic()
        self._drain()
        tables, ring_meta = self.tap.snapshot(drain=False)
        try:
            self._publish(tables, ring_meta, duration_s=time.time() - self.started)
            self._flushed_read = ring_meta.get("read", 0)
        except OSError as exc:
            if check:
                raise RecordError(f"cannot write the trace {self.out}: {exc.strerror or exc}") from None
            self.say(f"gpuscope record: could not write the trace yet ({exc}); retrying")
        self._flushed_at = time.monotonic()
        self._flush_cost = self._flushed_at - began

    def finish(self, returncode: int, stdout_text: str | None) -> Trace:
        self._drain()
        tables, ring_meta = self.tap.finish(drain=False)
        extra = {"exit": how_it_ended(returncode), "recording": {**self.meta["recording"], "state": COMPLETE},
                 "load": load_since(self._load_from)}  # the program, reaped by now, counts as the recorder's own
        if self.interrupted is not None:
            extra["interrupted"] = self.interrupted
        if stdout_text is not None:
            extra["stdout"] = stdout_text
        if not ring_meta.get("opened") and self.ring_error is None:
            extra["warnings"] = [no_events_advice(self.command)]
        try:
            trace = self._publish(tables, ring_meta, duration_s=time.time() - self.started, **extra)
        except OSError as exc:
            raise RecordError(f"cannot write the trace {self.out} ({exc}); the events are still in "
                              f"{self.tap.path}: `gpuscope record --from-ring {self.tap.path} --out "
                              f"{self.out}` makes it") from None
        if not self.quiet:
            summarize(trace)
        return trace

    def _publish(self, tables: dict, ring_meta: dict, **entries) -> Trace:
        if self.ring_error is not None:
            ring_meta = {**ring_meta, "error": self.ring_error}
        trace = Trace(meta={**self.meta, "ring": ring_meta, **entries}, tables=tables)
        publish(trace, self.out)
        return trace

    def say(self, line: str) -> None:
        if not self.quiet:
            say(line)


class _StopSignals:
    """Notes SIGINT, SIGTERM and SIGHUP while installed (the recording loop acts on them). Handlers can only be
    installed from the main thread; elsewhere the signals keep their old meaning."""

    def __init__(self) -> None:
        self._received: list[tuple[int, float]] = []
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in _STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._note)
        return self

    def _note(self, signum: int, frame) -> None:
        self._received.append((signum, time.monotonic()))

    def take(self) -> list[tuple[int, float]]:
        """(signal, when) of each signal since the last call."""
        taken, self._received[:] = list(self._received), []
        return taken

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _owns_terminal_foreground() -> bool:
    """True when this process's group is the foreground group of its controlling terminal (the terminal then sends
    Ctrl-C and hangup to the whole group)."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False  # no controlling terminal
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


class _PipeReader:
    """Reads a child's piped output in a thread so the child never blocks on a full pipe."""

    def __init__(self, stream):
        self._chunks: list[str] = []
        self._thread = None
        if stream is not None:
            self._thread = threading.Thread(target=lambda: self._chunks.extend(stream), daemon=True)
            self._thread.start()

    def text(self) -> str:
        if self._thread is not None:
            self._thread.join()
        return "".join(self._chunks)


def say(line: str, stream=None) -> None:
    """Tell the user; a terminal that hung up (SIGHUP) cannot be written to, and that stops nothing."""
    try:
        print(line, file=stream or sys.stderr, flush=True)
    except OSError:
        pass


def summarize(trace: Trace) -> None:
    meta, ring = trace.meta, trace.meta["ring"]
    counts = ", ".join(f"{kind} {len(frame)}" for kind, frame in sorted(trace.tables.items())) or "no events"
    if meta.get("exit"):
        stopped = f" after {meta['interrupted']['signal_name']}" if meta.get("interrupted") else ""
        say(f"gpuscope record: program {meta['exit']['how']}{stopped}")
    if ring.get("error"):
        say(f"gpuscope record: the ring could not be read: {ring['error']}")
    elif not ring.get("opened"):
        say(f"gpuscope record: {no_events_advice(meta['command'] or ['the program'])}")
    else:
        say(f"gpuscope record: {ring['read']} events ({counts}); lost {ring['lost']}; ring {ring['state']}")
    say(str(trace.path), sys.stdout)
