"""What a live dashboard follows, as one object with one interface: a session (in this process or isolated), this
process's engine (the sessions of a sweep), or the ring file of another process.

Each source says which ring to read (`tap()`), what to draw of its steps (`steps()`), the trace so far for the
doctor (`trace_so_far()`), whether the dashboard's workload can be held between two steps (`controls_engine`),
and what workload it can run (`workload()` for a session, `sweep()` for the engine).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, NamedTuple

from gpuscope.errors import ReportError
from gpuscope.live.events import hook_steps
from gpuscope.runs.sweep import sweep
from gpuscope.session.assemble import build_trace
from gpuscope.session.protocol import SessionLike
from gpuscope.session.session import Engine
from gpuscope.trace.model import Trace
from gpuscope.trace.ringtap import RingTap
from gpuscope.units import duration

Series = dict[str, tuple[list, list, list]]  # per plotted line: context, step time (ms), hover text of each step
RECENT_STEPS = 16  # the steps the counters' "recent step" time is the median of


class Steps(NamedTuple):
    """What the dashboard draws of a source's steps so far."""
    series: Series
    new: int  # steps since the last call
    drawn: int  # steps on the plot (the progress bar)
    done: int  # steps completed (the doctor runs again when it grows)
    begun: int  # steps begun (the counter)
    recent_ms: list[float]  # the last drawn steps' times


class _Source:
    """What every source offers; each adds `steps()` and `trace_so_far()`."""
    title: str  # what the dashboard follows, for its title
    controls_engine = False  # Pause and Stop hold the dashboard's workload between two steps
    idle_status = "watching"  # the status while the dashboard runs no workload

    def __init__(self) -> None:
        self.rows: list[dict] = []  # the steps the Python side reported (a session's or a sweep's)
        self._tap: RingTap | None = None

    def tap(self) -> RingTap | None:
        """The ring to read; None while there is none yet."""
        return self._tap

    def finished(self) -> bool:
        """Whether there is nothing more to follow, without a workload of the dashboard's."""
        return False

    def workload(self, function: Callable, args: tuple, kwargs: dict) -> Callable[[], object]:
        raise ReportError("run() needs a dashboard over a session: gpuscope.live(session)")

    def sweep(self, configs: list, model, depths, n_steps: int, options: dict) -> Callable[[], object]:
        raise ReportError("sweep() opens its own sessions: use a dashboard made with gpuscope.live() and no source")

    def close(self) -> None:
        if self._tap is not None:
            self._tap.close()


class _ReportedSteps(_Source):
    """Steps reported as they happen (a session's step listener, the sweep's on_step), each drawn once.
    `hold`: the dashboard's step boundary, where a workload of its own waits while paused or ends when stopped."""

    def __init__(self, since_ns: int, hold: Callable[[], None]):
        super().__init__()
        self.since_ns = since_ns
        self._hold = hold
        self._series: Series = {}
        self._recent_ms: list[float] = []
        self._drawn_rows = 0

    def on_step(self, row: dict) -> None:
        self.rows.append(row)
        if self.controls_engine:
            self._hold()

    def steps(self) -> Steps:
        rows = self.rows[self._drawn_rows:]
        self._drawn_rows += len(rows)
        for row in rows:
            key = _series_key(row)
            if key is None or row.get("status", 0) != 0:
                continue
            x, y, hover = self._series.setdefault(key, ([], [], []))
            x.append(int(row["pos_after"]))
            y.append(row["wall_ns"] / 1e6)
            self._recent_ms = (self._recent_ms + [row["wall_ns"] / 1e6])[-RECENT_STEPS:]
            hover.append(f"step {row['step']}, {row['n_tokens']} token(s), {duration(row['wall_ns'])}")
        drawn = sum(len(x) for x, _, _ in self._series.values())
        return Steps(self._series, len(rows), drawn, self._drawn_rows, self._drawn_rows, self._recent_ms)

    def _trace(self, label: str, pid: int, meta: dict) -> Trace:
        tap = self._tap
        processes = {"main": {"pid": pid, "tables": tap.tables(), "ring": tap.ring_meta()}}
        return build_trace(list(self.rows), processes, label=label, meta={**meta, "source": "live"})


class SessionSource(_ReportedSteps):
    """A session's steps and its main ring (read from the dashboard's opening on). Only an in-process session's
    steps can be held: an isolated one's arrive over its pipe, which a stop in the middle would break."""

    def __init__(self, session: SessionLike, since_ns: int, hold: Callable[[], None]):
        super().__init__(since_ns, hold)
        self.session = session
        self.title = f"session {session.label}"
        self.controls_engine = session.in_process
        main = session.processes()["main"]
        self._pid = main["pid"]
        self._tap = RingTap(main["ring"], since_ns=since_ns)
        session.add_step_listener(self.on_step)

    def workload(self, function: Callable, args: tuple, kwargs: dict) -> Callable[[], object]:
        return lambda: self.session.run(function, *args, **kwargs)

    def trace_so_far(self) -> Trace:
        return self._trace(self.session.label, self._pid, self.session.meta())


class EngineSource(_ReportedSteps):
    """This process's engine, for a sweep that opens its sessions one after another: its ring once it exists."""
    title = "this process's engine"
    controls_engine = True

    def tap(self) -> RingTap | None:
        if self._tap is None:
            engine = Engine.current()
            if engine is not None:
                self._tap = RingTap(engine.ring_path, since_ns=self.since_ns)
        return self._tap

    def sweep(self, configs: list, model, depths, n_steps: int, options: dict) -> Callable[[], object]:
        return lambda: sweep(configs, model, depths=depths, n_steps=n_steps, progress=False, on_step=self.on_step,
                             **options)

    def trace_so_far(self) -> Trace:
        return self._trace("live", os.getpid(), {})


class RingFileSource(_Source):
    """Another process's ring: its steps come from its hook events, read until its writer is gone. Pause freezes
    the display and Stop detaches; the process is never touched."""
    idle_status = "running"  # the other process runs on its own

    def __init__(self, path: Path):
        super().__init__()
        self.title = f"ring {path}"
        self._tap = RingTap(path)
        self._program: str | None = None
        self._done = 0

    def finished(self) -> bool:
        reader = self._tap.reader
        if reader is None:
            return False
        status = reader.status
        return status.state != "alive" and status.pending == 0

    def steps(self) -> Steps:
        begun = self._tap.counts.get("decode_begin", 0)
        steps = hook_steps(self._tap, self._program_name()) if begun else None
        if steps is None or not len(steps):
            return Steps({}, 0, self._done, self._done, begun, [])
        done = steps[steps["complete"] & steps["wall_ns"].notna()]
        new = max(len(done) - self._done, 0)
        self._done = len(done)
        series = {}
        for (config, n_tokens), group in done.groupby(["config", "n_tokens"], sort=False):
            key = str(config) if n_tokens == 1 else f"{config} [{n_tokens}-token]"
            series[key] = (group["context"].tolist(), (group["wall_ns"] / 1e6).tolist(),
                           [f"step {s}, {duration(w)}" for s, w in zip(group["step"], group["wall_ns"])])
        recent_ms = (done.sort_values("t_begin_ns")["wall_ns"].tail(RECENT_STEPS) / 1e6).tolist()
        return Steps(series, new, self._done, self._done, begun, recent_ms)

    def _program_name(self) -> str:
        """The writer's program name (for labels), read from /proc once while it runs."""
        if self._program is None:
            try:
                self._program = Path(os.readlink(f"/proc/{self._tap.reader.header.writer_pid}/exe")).name
            except OSError:  # gone already: a generic label
                self._program = "engine"
        return self._program

    def trace_so_far(self) -> Trace:
        return Trace(meta={"source": "live", "ring": self._tap.ring_meta()}, tables=self._tap.tables())


def _series_key(row: dict) -> str | None:
    """Which line of the step-time plot a session step belongs to (fill steps are not drawn)."""
    if row.get("phase") == "fill":
        return None
    key = str(row.get("config", ""))
    if row.get("role", "target") != "target":
        key += f" ({row['role']})"
    if row.get("phase", "decode") != "decode":
        key += f" [{row['phase']}]"
    return key


def source_for(source, since_ns: int, hold: Callable[[], None]) -> _Source:
    """The source that `gpuscope.live(source)` follows: None is this process's engine, a path a ring file, anything
    else a session. `since_ns`: a session's or the engine's events from then on (a ring file's are all shown)."""
    if source is None:
        return EngineSource(since_ns, hold)
    if isinstance(source, (str, os.PathLike)):
        return RingFileSource(Path(source))
    return SessionSource(source, since_ns, hold)
