"""Sessions in a worker process: the Session API, with the engine in a child process.

Two reasons to use it: an engine abort (GGML_ASSERT, SIGSEGV, SIGILL) kills the worker, not the notebook's
kernel; and a process can load one libllama, so comparing two builds side by side needs two processes.

The worker is a fresh interpreter started with an entry point of its own (`serve`), so any program can make one,
a script read from standard input included. It hosts a plain `Session(collect_events=False)`. This process reads
the rings itself (the worker's and its RPC servers', named in the worker's ready message), receives every step row
as it is recorded, and builds the trace. So when the worker dies, everything it recorded up to its death is
still here, and the trace says how it died (`meta["exit"]`, `meta["crashed"]`, and the ring's own state).
"""
from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import subprocess
import sys
import time
import traceback
from multiprocessing.connection import Connection, Pipe
from pathlib import Path
from typing import Callable

import pandas as pd

from gpuscope.errors import EngineCrashedError, GpuscopeError, SessionError
from gpuscope.ring.reader import RingReader
from gpuscope.session.assemble import build_trace, steps_frame
from gpuscope.session.binding import EngineBuild, resolve_engine
from gpuscope.session.config import SplitConfig
from gpuscope.session.processes import how_it_ended
from gpuscope.session.rpc import spawn
from gpuscope.session.scratch import new_ring_path, remove_leftovers
from gpuscope.session.session import Session
from gpuscope.trace.model import Trace, save_trace
from gpuscope.trace.ringtap import RingTap

_POLL_INTERVAL_S = 0.05

# The worker's own entry point, not multiprocessing's spawn: spawn re-imports this program's __main__ in the
# worker, which fails for a script read from standard input. The worker imports this gpuscope (argv[1] holds it),
# then takes this process's sys.path, so that what session.run is given imports there as it does here.
_ENTRY = ("import sys; sys.path.insert(0, sys.argv[1]); from gpuscope.session.worker import serve; "
          "serve(int(sys.argv[2]))")
_GPUSCOPE_HOME = Path(__file__).resolve().parent.parent.parent


def serve(fd: int) -> None:
    """The worker process: one Session, answering its parent's calls over the socket `fd`."""
    connection = Connection(fd)
    try:
        sys.path[:] = connection.recv()
        spec = connection.recv()
    except BaseException as exc:  # noqa: BLE001 (reported to the parent, which raises it)
        connection.send(("error", _portable(exc)))
        return
    connection.send(("started", None))  # from here on, a death of this process is the engine's
    try:
        session = Session(**spec, collect_events=False)
    except BaseException as exc:  # noqa: BLE001
        connection.send(("error", _portable(exc)))
        return
    session.add_step_listener(lambda row: connection.send(("step", row)))
    connection.send(("ready", {"meta": session.meta(), "processes": session.processes()}))
    while True:
        try:
            name, args, kwargs = connection.recv()
        except EOFError:  # the parent went away
            session.close()
            return
        except Exception as exc:  # noqa: BLE001 (a call naming what this process cannot import)
            unreadable = SessionError(f"the engine worker could not read the call ({type(exc).__name__}: {exc}): "
                                      "what an isolated session is given must be importable from a module")
            connection.send(("error", _portable(unreadable)))
            continue
        try:
            if name == "close":
                session.close()
                connection.send(("result", session.processes()))  # now with how the RPC servers ended
                return
            attribute = getattr(session, name)
            connection.send(("result", attribute(*args, **kwargs)))
        except BaseException as exc:  # noqa: BLE001
            connection.send(("error", _portable(exc)))


def _portable(exc: BaseException) -> tuple[str, str, str]:
    """(class path, message, worker traceback) of an exception: rebuilt on the other side."""
    return (f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc),
            "".join(traceback.format_exception(exc)))


def _rebuild(portable: tuple[str, str, str]) -> BaseException:
    path, message, worker_traceback = portable
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        cls = None
    if isinstance(cls, type) and issubclass(cls, GpuscopeError):
        return cls(message)
    return SessionError(f"in the engine worker: {path.rsplit('.', 1)[-1]}: {message}\n{worker_traceback}")


class _Remote:
    """A Session method that runs in the worker."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, instance, owner):
        if instance is None:
            return self
        return lambda *args, **kwargs: instance._call(self.name, *args, **kwargs)


class IsolatedSession:
    """The Session API with the engine in a worker process (open it with `open_session(..., isolate=True)`)."""

    in_process = False

    def __init__(self, model: str | os.PathLike | None = None, config: SplitConfig | None = None, *,
                 engine: str | os.PathLike | EngineBuild | None = None, draft_model: str | os.PathLike | None = None,
                 ring_capacity: int | None = None, rpc_threads: int | None = None,
                 verbose: bool = False):
        self.config = config or SplitConfig()
        self.build = resolve_engine(engine)
        remove_leftovers()
        self.ring_path = new_ring_path("worker")  # this process reads it and removes it
        spec = {"model": str(model) if model is not None else None, "config": self.config, "engine": self.build,
                "draft_model": str(draft_model) if draft_model is not None else None, "ring_path": str(self.ring_path),
                "ring_capacity": ring_capacity, "rpc_threads": rpc_threads, "verbose": verbose}
        self._connection, child_end = Pipe()
        with child_end:  # a fresh interpreter: no libllama inherited
            self._process = spawn([sys.executable, "-c", _ENTRY, str(_GPUSCOPE_HOME), str(child_end.fileno())],
                                  pass_fds=(child_end.fileno(),), stdin=subprocess.DEVNULL)
        self._started = False
        self._rows: list[dict] = []
        self._tags: dict = {}
        self._listeners: list[Callable[[dict], None]] = []
        self._taps: dict[str, RingTap] = {"main": RingTap(self.ring_path)}
        self._pids: dict[str, int] = {}
        self._endpoints: dict[str, str] = {}
        self._exit: dict | None = None
        self._server_exits: dict[str, dict] = {}
        self._final: dict[str, dict] | None = None
        self._ring_reader: RingReader | None = None
        self._last_poll = 0.0
        self._pids["main"] = self._process.pid
        atexit.register(self.close)
        try:
            self._send(sys.path, "Session()")
            self._send(spec, "Session()")
            ready = self._receive("Session()")
        except BaseException:
            self.close()
            raise
        self._meta = ready["meta"]
        for name, process in ready["processes"].items():
            self._pids[name] = process["pid"]
            if name != "main":
                self._taps[name] = RingTap(Path(process["ring"]))
                self._endpoints[name] = process["endpoint"]

    # -- talking to the worker -----------------------------------------------------------------------------------

    def _call(self, name: str, *args, **kwargs):
        if self._exit is not None:
            raise EngineCrashedError(f"the engine worker is gone ({self._exit['how']}); session.trace() still "
                                     "holds what it recorded")
        self._send((name, args, kwargs), name)
        return self._receive(name)

    def _send(self, message, during: str) -> None:
        try:
            self._connection.send(message)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self._worker_died(during)

    def _receive(self, during: str):
        while True:
            try:
                kind, payload = self._connection.recv()
            except (EOFError, ConnectionResetError, OSError):
                self._worker_died(during)
            if kind == "started":
                self._started = True
                continue
            if kind == "step":
                self._rows.append(payload)
                for listener in self._listeners:
                    listener(payload)
                self._poll()
                continue
            self._poll(force=True)
            if kind == "error":
                raise _rebuild(payload)
            return payload

    def _worker_died(self, during: str):
        self._exit = self._reap()
        self._finish()
        if not self._started:
            raise SessionError(
                f"the worker process ({sys.executable}) {self._exit['how']} before it loaded the engine; its "
                "error output went to this process's standard error")
        raise EngineCrashedError(
            f"the engine worker {self._exit['how']} during {during}; this process is unharmed, and "
            "session.trace() holds every step and event recorded up to the crash")

    def _reap(self) -> dict:
        """How the worker ended, once it has (killed if it still runs 30 s after its end of the pipe failed)."""
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        return how_it_ended(self._process.returncode)

    def _poll(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_poll >= _POLL_INTERVAL_S:
            self._last_poll = now
            for tap in self._taps.values():
                tap.poll()

    # -- the Session API -----------------------------------------------------------------------------------------

    decode = _Remote("decode")
    fill = _Remote("fill")
    random_tokens = _Remote("random_tokens")
    tokenize = _Remote("tokenize")
    logits = _Remote("logits")
    argmax = _Remote("argmax")
    top = _Remote("top")
    rollback = _Remote("rollback")
    clear = _Remote("clear")
    position = _Remote("position")
    n_ctx = _Remote("n_ctx")
    n_batch = _Remote("n_batch")
    n_vocab = _Remote("n_vocab")
    set_capture = _Remote("set_capture")
    captured = _Remote("captured")

    def run(self, function: Callable, *args, **kwargs):
        """`function(session, *args, **kwargs)` inside the worker, which imports `function` by its module."""
        if getattr(function, "__module__", None) == "__main__":
            raise SessionError(f"session.run({function.__qualname__}): the engine worker cannot import this "
                               "program's __main__; define the function in a module")
        return self._call("run", function, *args, **kwargs)

    @property
    def label(self) -> str:
        return self.config.label

    @property
    def crashed(self) -> bool:
        return self._exit is not None and self._exit["returncode"] != 0

    def set_tags(self, **tags) -> None:
        self._call("set_tags", **tags)
        self._tags = dict(tags)

    @contextlib.contextmanager
    def tagged(self, **tags):
        previous = dict(self._tags)
        self.set_tags(**previous, **tags)
        try:
            yield self
        finally:
            if self._exit is None:
                self.set_tags(**previous)

    def add_step_listener(self, listener: Callable[[dict], None]) -> None:
        self._listeners.append(listener)

    @property
    def steps(self) -> pd.DataFrame:
        return steps_frame(self._rows)

    @property
    def ring(self) -> RingReader:
        """A live reader of the worker's ring, in this process."""
        if self._ring_reader is None:
            self._ring_reader = RingReader(self.ring_path)
        return self._ring_reader

    def processes(self) -> dict[str, dict]:
        return {name: {"pid": pid, "ring": str(self._taps[name].path)} for name, pid in self._pids.items()}

    def meta(self) -> dict:
        meta = {**self._meta, "isolated": True}
        if self._exit is not None:
            meta["exit"] = self._exit
            meta["crashed"] = self.crashed
        return meta

    def trace(self, *, tables: dict[str, pd.DataFrame] | None = None, **meta) -> Trace:
        processes = self._final or self._snapshot()
        return build_trace(self._rows, processes, label=self.label, meta={**self.meta(), **meta},
                           extra_tables=tables)

    def save(self, path: str | os.PathLike, **meta) -> Path:
        return save_trace(self.trace(**meta), path)

    def _snapshot(self) -> dict[str, dict]:
        processes = {}
        for name, tap in self._taps.items():
            tables, ring = tap.snapshot()
            processes[name] = {"pid": self._pids.get(name, 0), "tables": tables, "ring": ring}
            if name in self._endpoints:
                processes[name]["endpoint"] = self._endpoints[name]
        return processes

    def _finish(self) -> None:
        """Read every ring to its end and remove the ring files (the worker and its servers are gone)."""
        if self._final is not None:
            return
        self._final = {}
        for name, tap in self._taps.items():
            tables, ring = tap.finish()
            self._final[name] = {"pid": self._pids.get(name, 0), "tables": tables, "ring": ring}
            if name in self._endpoints:
                self._final[name]["endpoint"] = self._endpoints[name]
            if name in self._server_exits:
                self._final[name]["exit"] = self._server_exits[name]
            tap.path.unlink(missing_ok=True)
        if self._ring_reader is not None:
            self._ring_reader.close()

    def close(self) -> None:
        if self._final is not None:
            return
        atexit.unregister(self.close)
        if self._exit is None:
            with contextlib.suppress(EngineCrashedError):
                ended = self._call("close")
                self._server_exits = {name: p["exit"] for name, p in ended.items() if "exit" in p}
            if self._exit is None:
                self._exit = self._reap()
        self._finish()

    def __enter__(self) -> "IsolatedSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = self._exit["how"] if self._exit else f"worker pid {self._process.pid}"
        return f"IsolatedSession({self.label!r}, {state}, {len(self._rows)} steps)"
