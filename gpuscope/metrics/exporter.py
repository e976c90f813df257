"""The exporter: rings named on the command line (paths, glob patterns, folders of `*.ring`) followed a poll at a
time, and their series served over HTTP for Prometheus (prometheus_client's server, in a thread of its own).

A pattern or folder is looked at again every `DISCOVER_S`, so engines started later are followed too, up to
`MAX_RINGS` (the ring label's cap); a path named as it is is followed even before the ring exists (an engine
creates its ring when it starts).
"""
from __future__ import annotations

import errno
import glob
import os
import threading
import time
from pathlib import Path

from prometheus_client import generate_latest, start_http_server

from gpuscope.errors import GpuscopeError
from gpuscope.log import say
from gpuscope.metrics.capture import CapturePolicy
from gpuscope.metrics.follow import RingFollower
from gpuscope.metrics.series import CAPS, Series

DEFAULT_PORT = 9464
DEFAULT_INTERVAL_S = 1.0
DISCOVER_S = 2.0
MAX_RINGS = CAPS["ring"]


class MetricsError(GpuscopeError):
    """The exporter cannot serve: its port is taken or cannot be bound."""


class Exporter:
    """Follows the rings of `sources` into one set of series (`series.registry`)."""

    def __init__(self, sources: list[str | os.PathLike], *, capture: CapturePolicy | None = None):
        self.sources = [str(source) for source in sources]
        self.capture = capture
        self.series = Series()
        self.followers: dict[Path, RingFollower] = {}
        self._discovered_at = 0.0
        self._refused: set[Path] = set()

    def _paths(self) -> list[Path]:
        paths = []
        for source in self.sources:
            if glob.has_magic(source):
                paths += sorted(Path(p) for p in glob.glob(source))
            elif os.path.isdir(source):
                paths += sorted(Path(source).glob("*.ring"))
            else:
                paths.append(Path(source))
        return paths

    def discover(self) -> None:
        """Start following the rings that appeared (up to MAX_RINGS)."""
        self._discovered_at = time.monotonic()
        for path in self._paths():
            path = path.absolute()
            if path in self.followers or path in self._refused:
                continue
            if len(self.followers) >= MAX_RINGS:
                self._refused.add(path)
                say(f"gpuscope metrics: {path}: not followed: already following {MAX_RINGS} rings (the most)")
                continue
            self.followers[path] = RingFollower(path, self.series, capture=self.capture)
        self.series["exporter_rings"].set(len(self.followers))

    def poll(self) -> None:
        """One poll of every ring, timed (exporter_poll_seconds)."""
        began = time.perf_counter()
        if time.monotonic() - self._discovered_at >= DISCOVER_S:
            self.discover()
        for follower in self.followers.values():
            try:
                follower.poll()
            except Exception as exc:  # noqa: BLE001 - one ring's surprise must not stop the others being served
                follower.fail(f"stopped following after an error: {type(exc).__name__}: {exc}")
        self.series["exporter_poll_seconds"].observe(time.perf_counter() - began)

    def scrape(self) -> bytes:
        """The exposition text, as Prometheus gets it."""
        return generate_latest(self.series.registry)

    def serve(self, port: int = DEFAULT_PORT, address: str = "127.0.0.1"):
        """Serve the series at http://address:port/metrics (a thread); the server (shut it down to stop)."""
        try:
            server, _ = start_http_server(port, address, registry=self.series.registry)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise MetricsError(f"port {port} on {address} is in use: another exporter or program serves there "
                                   "(choose another with --port)") from None
            raise MetricsError(f"cannot serve on {address}:{port}: {exc.strerror or exc}") from None
        return server

    def run(self, interval_s: float = DEFAULT_INTERVAL_S, *, stop: threading.Event | None = None,
            duration_s: float | None = None) -> None:
        """Poll every `interval_s` until `stop` is set or `duration_s` has passed."""
        stop = stop or threading.Event()
        ends = time.monotonic() + duration_s if duration_s is not None else None
        self.discover()
        while not stop.is_set() and (ends is None or time.monotonic() < ends):
            self.poll()
            stop.wait(interval_s)
        self.poll()  # what came in the last interval

    def close(self) -> None:
        for follower in self.followers.values():
            follower.close()
