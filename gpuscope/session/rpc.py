"""Local ggml-rpc-server processes: several devices on one machine, each server with its own ring.

Each server listens on a free loopback port, writes its events to its own ring (named by $GPUSCOPE_RING), and
lives exactly as long as the session that started it: stopped on close, and killed by the kernel if the process
that started it dies (PR_SET_PDEATHSIG, see `spawn`), so a crashed or killed notebook leaves no server behind.
"""
from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from gpuscope.errors import RpcServerError
from gpuscope.session.processes import die_with_parent, how_it_ended
from gpuscope.session.scratch import new_ring_path, new_rpc_folder
from gpuscope.trace.ringtap import RingTap

_START_ATTEMPTS = 3


class _Spawner:
    """Forks every child from one thread that ends only with this process.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not its process: a session made in a
    short-lived thread (a thread pool, a notebook's background job) lost its servers the moment that thread
    returned, and the next decode over RPC aborted the process. This daemon thread waits on its queue until the
    process exits (the interpreter's exit does not join daemon threads, so atexit handlers still find the
    children alive and stop them properly)."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def popen(self, args: list[str], **options) -> subprocess.Popen:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():  # not alive: this is a fork of the process
                self._thread = threading.Thread(target=self._serve, name="gpuscope-spawner", daemon=True)
                self._thread.start()
        started: Future = Future()
        self._requests.put((args, options, started))
        return started.result()

    def _serve(self) -> None:
        while True:
            args, options, started = self._requests.get()
            try:
                started.set_result(subprocess.Popen(args, preexec_fn=die_with_parent, **options))
            except BaseException as exc:  # noqa: BLE001 (raised in the thread that asked)
                started.set_exception(exc)


_SPAWNER = _Spawner()


def spawn(args: list[str], **options) -> subprocess.Popen:
    """subprocess.Popen(args, **options) for a child the kernel kills when this process dies (and only then),
    whichever thread asks."""
    return _SPAWNER.popen(args, **options)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class RpcServer:
    index: int
    port: int
    ring_path: Path
    log_path: Path
    process: subprocess.Popen
    stopped_by_session: bool = False

    @property
    def name(self) -> str:
        """The process tag its events carry in a trace."""
        return f"rpc{self.index}"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def exit_info(self) -> dict:
        return {**how_it_ended(self.process.returncode), "stopped_by_session": self.stopped_by_session}

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class LocalRpcServers:
    """N ggml-rpc-server processes on loopback; `endpoints` once started; `finish()` stops them and returns their
    rings' tables."""

    def __init__(self, program: Path, count: int, *, threads: int | None = None, ring_capacity: int | None = None,
                 startup_timeout_s: float = 60.0, rings_owner: int | None = None):
        """rings_owner: the pid of the process that reads and removes the servers' rings (default: this one)."""
        self.program = program
        self.count = count
        self.threads = threads or max(1, (os.cpu_count() or 1) // (count + 1))
        self.ring_capacity = ring_capacity
        self.startup_timeout_s = startup_timeout_s
        self.rings_owner = rings_owner
        self.servers: list[RpcServer] = []
        self.taps: dict[str, RingTap] = {}
        self._scratch = new_rpc_folder()

    @property
    def endpoints(self) -> list[str]:
        return [server.endpoint for server in self.servers]

    def start(self) -> "LocalRpcServers":
        try:
            for index in range(self.count):
                server = self._start_one(index)
                self.servers.append(server)
                self.taps[server.name] = RingTap(server.ring_path)
        except BaseException:
            self.finish()
            raise
        return self

    def _start_one(self, index: int) -> RpcServer:
        for _ in range(_START_ATTEMPTS):  # a free port can be taken by someone else before the server binds it
            port = free_port()
            ring = new_ring_path(f"rpc{index}", self.rings_owner)
            env = {**os.environ, "GPUSCOPE_RING": str(ring)}
            if self.ring_capacity:
                env["GPUSCOPE_RING_CAPACITY"] = str(self.ring_capacity)
            log_path = self._scratch / f"rpc{index}.log"
            with open(log_path, "w") as log:
                process = spawn([str(self.program), "-H", "127.0.0.1", "-p", str(port), "-t", str(self.threads)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
            server = RpcServer(index, port, ring, log_path, process)
            if self._wait_listening(server):
                return server
            ring.unlink(missing_ok=True)
        raise RpcServerError(f"{self.program} did not start on loopback after {_START_ATTEMPTS} attempts; "
                             f"its last words:\n{server.log_tail()}")

    def _wait_listening(self, server: RpcServer) -> bool:
        """True once the server accepts connections; False if it exited (port taken); raises on a hang."""
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", server.port), timeout=1.0):
                    return True
            except OSError:
                time.sleep(0.02)
        server.process.kill()
        server.process.wait()
        raise RpcServerError(f"ggml-rpc-server {server.name} did not listen on port {server.port} within "
                             f"{self.startup_timeout_s:.0f} s:\n{server.log_tail()}")

    def poll(self) -> None:
        """Drain every server's ring (call often enough that a long run does not lap a ring)."""
        for tap in self.taps.values():
            tap.poll()

    def dead(self) -> list[RpcServer]:
        return [server for server in self.servers if server.process.poll() is not None]

    def stop(self) -> None:
        """Stop every server still running: SIGTERM, then SIGKILL after 5 s, and remove their logs. Their ring
        files stay."""
        for server in self.servers:
            if server.process.poll() is None:
                server.stopped_by_session = True
                server.process.terminate()
                try:
                    server.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    server.process.kill()
                    server.process.wait()
        shutil.rmtree(self._scratch, ignore_errors=True)

    def finish(self) -> dict[str, dict]:
        """Stop the servers and collect each one's events, then remove their rings:
        {process name: {"pid", "endpoint", "tables", "ring", "exit"}}."""
        self.stop()
        results: dict[str, dict] = {}
        for server in self.servers:
            tables, ring_meta = self.taps[server.name].finish()
            results[server.name] = {"pid": server.process.pid, "endpoint": server.endpoint, "tables": tables,
                                    "ring": ring_meta, "exit": server.exit_info()}
            server.ring_path.unlink(missing_ok=True)
        self.servers = []
        return results

    def describe(self) -> list[dict]:
        """Each server's name, endpoint, pid and ring path, and how it ended once it has."""
        described = []
        for server in self.servers:
            entry = {"name": server.name, "endpoint": server.endpoint, "pid": server.process.pid,
                     "ring": str(server.ring_path)}
            if server.process.poll() is not None:
                entry["exit"] = server.exit_info()
            described.append(entry)
        return described

