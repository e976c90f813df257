"""The live dashboard: ipywidgets and plotly FigureWidgets that follow an engine while it decodes.

    dash = gpuscope.live(session)
    dash.run(sweep_loop, [0, 512, 1024], 32)   # the workload runs in a background thread of this kernel
    dash.wait()                                # (optional) block until it is done

    dash = gpuscope.live("/dev/shm/server.ring")   # another process's ring, e.g. llama-server under gpuscope

A refresh thread reads the ring with its own reader a few times a second and updates: step time against context
per configuration, counters (steps, reallocations, re-reserves, syncs, lost events), memory per device, the
doctor's latest findings, and a progress bar. Pause holds the workload between two steps; Stop ends it at the next
step boundary (the engine is never interrupted inside a step). Attached to another process's ring, Pause freezes
the display and Stop detaches; the other process is never touched.
"""
from __future__ import annotations

import html
import os
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

import ipywidgets as w
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from IPython import get_ipython
from IPython.display import display

from gpuscope.analysis.facade import Analysis
from gpuscope.doctor.rules import diagnose
from gpuscope.errors import ReportError
from gpuscope.live.events import RingEvents, held_now, hook_steps
from gpuscope.plots.style import MIB, category_color, config_colors
from gpuscope.runs.sweep import sweep
from gpuscope.session.assemble import build_trace
from gpuscope.session.session import Engine, Session
from gpuscope.session.workloads import sweep_loop
from gpuscope.trace.model import Trace

MAX_POINTS_PER_SERIES = 20_000  # the oldest points of a very long run leave the plot, not the trace
_SEVERITY_COLORS = {"critical": "#cf222e", "warning": "#bf8700", "info": "#0969da"}


class WorkloadStopped(Exception):
    """Raised at a step boundary inside the dashboard's workload thread when Stop was pressed."""


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


class Dashboard:
    """A live view of a session (in this process), of this process's engine (for `sweep`), or of a ring file.

    source: a Session (or an isolated one), None (this process's engine: use `sweep`), or a ring path. Pause and
    Stop hold the workload of an in-process session or sweep; over an isolated session or another process's ring
    they only freeze or end the display.
    interval_s: seconds between refreshes; findings_every_s: seconds between runs of the doctor over what was read
    so far; show: display the widgets now (in a notebook)."""

    def __init__(self, source=None, *, interval_s: float = 0.25, findings_every_s: float = 5.0,
                 title: str | None = None, show: bool = True):
        self.session = source if source is not None and not isinstance(source, (str, os.PathLike)) else None
        self.ring_path = Path(source) if isinstance(source, (str, os.PathLike)) else None
        self.interval_s = interval_s
        self.findings_every_s = findings_every_s
        self.started_ns = time.monotonic_ns()
        # only an in-process session can be held or stopped between steps from here
        self._controls_engine = isinstance(self.session, Session) or (source is None)
        self.events: RingEvents | None = None
        if self.ring_path is not None:
            self.events = RingEvents(self.ring_path)
        elif self.session is not None:
            ring = getattr(self.session, "ring_path", None) or self.session.engine.ring_path
            self.events = RingEvents(ring, since_ns=self.started_ns)
            self.session.add_step_listener(self._on_step)
        self.rows: list[dict] = []
        self.refreshes = 0
        self.refresh_seconds = 0.0  # CPU time the refresh thread spent refreshing (the dashboard's own cost)
        self.refreshes_with_new_steps = 0
        self.result = None
        self.error: BaseException | None = None
        self.findings: list = []
        self.total_steps: int | None = None
        self._series: dict[str, tuple[list, list, list]] = {}
        self._recent_ms: list[float] = []  # the last drawn steps' times, for the counters
        self._drawn_rows = 0
        self._last_findings = 0.0
        self._memory_at_buffers = 0  # buffer events the memory figure was drawn from
        self._findings_at_rows = -1
        self._paused = threading.Event()
        self._stop = threading.Event()
        self._closing = threading.Event()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._build_widgets(title or self._describe_source())
        self._refresher = threading.Thread(target=self._refresh_loop, name="gpuscope-dashboard", daemon=True)
        self._refresher.start()
        if show:
            self.display()

    # -- widgets -------------------------------------------------------------------------------------------------

    def _describe_source(self) -> str:
        if self.ring_path is not None:
            return f"ring {self.ring_path}"
        if self.session is not None:
            return f"session {self.session.label}"
        return "this process's engine"

    def _build_widgets(self, title: str) -> None:
        self.title = w.HTML(f"<b>gpuscope live</b> &middot; {html.escape(title)}")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="steps", bar_style="info",
                                      layout=w.Layout(width="320px"))
        self.pause_button = w.Button(description="Pause", icon="pause", layout=w.Layout(width="100px"))
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="danger",
                                    layout=w.Layout(width="100px"))
        self.pause_button.on_click(lambda _: self.resume() if self._paused.is_set() else self.pause())
        self.stop_button.on_click(lambda _: self.stop())
        self.status = w.HTML("starting")
        self.counters = w.HTML("")
        self.step_figure = go.FigureWidget(layout=dict(
            template="plotly_white", title="Step time against context", height=380, width=620,
            xaxis_title="context (KV cells in use)", yaxis_title="step time (ms)", legend_title_text="configuration",
            margin=dict(l=60, r=20, t=50, b=50), uirevision="live"))
        self.memory_figure = go.FigureWidget(layout=dict(
            template="plotly_white", title="Memory held now", height=380, width=420, barmode="stack",
            yaxis_title="MiB", legend=dict(orientation="h", y=-0.15), margin=dict(l=60, r=20, t=50, b=50),
            uirevision="live"))
        self.findings_html = w.HTML("<i>findings appear after the first steps</i>")
        self.widget = w.VBox([
            self.title, w.HBox([self.progress, self.pause_button, self.stop_button, self.status]), self.counters,
            w.HBox([self.step_figure, self.memory_figure]), self.findings_html])

    def display(self) -> None:
        if get_ipython() is not None:
            display(self.widget)

    # -- the workload --------------------------------------------------------------------------------------------

    def _on_step(self, row: dict) -> None:
        """Every step of the watched session(s): recorded, then the workload thread may be held or stopped."""
        self.rows.append(row)
        if threading.current_thread() is not self._worker or not self._controls_engine:
            return
        while self._paused.is_set() and not self._stop.is_set():
            time.sleep(0.02)
        if self._stop.is_set():
            raise WorkloadStopped(f"stopped from the dashboard after {len(self.rows)} steps")

    def _start(self, work: Callable[[], object], total_steps: int | None) -> None:
        if self._worker is not None and self._worker.is_alive():
            raise ReportError("the dashboard already runs a workload: wait() for it or stop() it first")
        self.total_steps = total_steps
        self._stop.clear()
        self._paused.clear()

        def target():
            try:
                self.result = work()
            except WorkloadStopped:
                self.result = None
            except BaseException as exc:  # shown in the dashboard and raised again by wait()
                self.error = exc

        self._worker = threading.Thread(target=target, name="gpuscope-workload", daemon=True)
        self._worker.start()

    def run(self, workload: Callable, *args, total_steps: int | None = None, **kwargs) -> None:
        """Run `workload(session, *args, **kwargs)` in a background thread (e.g. gpuscope.session.workloads.sweep_loop
        with depths and n_steps). total_steps: the drawn steps it will make, for the progress bar (known for
        sweep_loop)."""
        if self.session is None:
            raise ReportError("run() needs a dashboard over a session: gpuscope.live(session)")
        if total_steps is None and workload is sweep_loop and len(args) >= 2:
            total_steps = len(set(args[0])) * int(args[1])
        self._start(lambda: self.session.run(workload, *args, **kwargs), total_steps)

    def sweep(self, configs, model=None, *, depths=(0, 512, 1024), n_steps: int = 16, **options) -> None:
        """gpuscope.runs.sweep in a background thread, drawing every configuration as it is measured;
        the combined trace is `result` once done (wait())."""
        if self.session is not None or self.ring_path is not None:
            raise ReportError("sweep() opens its own sessions: use a dashboard made with gpuscope.live() and no source")
        configs = list(configs)
        self._start(lambda: sweep(configs, model, depths=depths, n_steps=n_steps, progress=False,
                                  on_step=self._on_step, **options),
                    len(configs) * len(set(depths)) * n_steps)

    def pause(self) -> None:
        self._paused.set()
        self.pause_button.description, self.pause_button.icon = "Resume", "play"

    def resume(self) -> None:
        self._paused.clear()
        self.pause_button.description, self.pause_button.icon = "Pause", "pause"

    def stop(self) -> None:
        """End the workload at the next step boundary (or detach from another process's ring)."""
        self._stop.set()
        self._paused.clear()
        self.stop_button.disabled = True
        self.pause_button.disabled = True
        if self._worker is None:
            self._closing.set()

    @property
    def running(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def wait(self, timeout: float | None = None):
        """Block until the workload ends and the dashboard drew its last refresh; returns the workload's result
        (None when stopped) and raises its error if it failed."""
        if self._worker is not None:
            self._worker.join(timeout)
            if self._worker.is_alive():
                raise TimeoutError(f"the workload is still running after {timeout} s")
        self._closing.set()
        self._refresher.join(max(5.0, 4 * self.interval_s + self.findings_every_s))
        if self.error is not None:
            raise self.error
        return self.result

    def close(self) -> None:
        """Stop refreshing and release the ring reader (the workload, if any, is stopped first)."""
        if self.running:
            self.stop()
            self._worker.join()
        self._closing.set()
        self._refresher.join()

    # -- refreshing ----------------------------------------------------------------------------------------------

    def _refresh_loop(self) -> None:
        try:
            while True:
                finished = self._finished()
                self.refresh()
                if finished or self._closing.is_set():
                    break
                self._closing.wait(self.interval_s)
            self.refresh(final=True)
        except Exception:  # a broken refresh must say why instead of leaving a frozen dashboard
            self.status.value = f"<span style='color:#cf222e'>dashboard error: " \
                                f"{html.escape(traceback.format_exc(limit=3))}</span>"
        finally:
            if self.events is not None:
                self.events.close()

    def _finished(self) -> bool:
        if self._worker is not None:
            return not self._worker.is_alive()
        if self.ring_path is not None and self.events is not None and self.events.reader is not None:
            return self.events.status()["state"] != "alive" and self.events.reader.status.pending == 0
        return False

    def _engine_events(self) -> RingEvents | None:
        """The ring to read: the session's, the given one, or (for sweep) this process's engine once it exists."""
        if self.events is None and self.session is None and self.ring_path is None:
            engine = Engine.current()
            if engine is not None:
                self.events = RingEvents(engine.ring_path, since_ns=self.started_ns)
        return self.events

    def refresh(self, final: bool = False) -> None:
        """Read what is new and update every widget (the refresh thread calls this; it is safe to call by hand)."""
        started = time.thread_time()
        with self._lock:
            events = self._engine_events()
            if events is not None and not (self._paused.is_set() and self._worker is None):
                events.poll()
            new_steps = self._update_steps(events)
            self._update_counters(events)
            if events is not None and events.counts.get("buffer", 0) != self._memory_at_buffers:
                self._update_memory(events)
            if final or (new_steps and time.monotonic() - self._last_findings >= self.findings_every_s):
                self._update_findings(events)
            self._update_status(final)
            self.refreshes += 1
            self.refreshes_with_new_steps += bool(new_steps)
            self.refresh_seconds += time.thread_time() - started

    def _points(self, events: RingEvents | None) -> tuple[dict[str, tuple[list, list, list]], int]:
        """Per series: context, step time (ms) and hover text of every drawn step; and the steps drawn."""
        if self.ring_path is None:
            rows = self.rows[self._drawn_rows:]
            self._drawn_rows += len(rows)
            for row in rows:
                key = _series_key(row)
                if key is None or row.get("status", 0) != 0:
                    continue
                x, y, hover = self._series.setdefault(key, ([], [], []))
                x.append(int(row["pos_after"]))
                y.append(row["wall_ns"] / 1e6)
                self._recent_ms = (self._recent_ms + [row["wall_ns"] / 1e6])[-16:]
                hover.append(f"step {row['step']}, {row['n_tokens']} token(s), {row['wall_ns'] / 1e6:.2f} ms")
            return self._series, len(rows)
        steps = hook_steps(events) if events is not None and events.counts.get("decode_begin") else pd.DataFrame()
        if not len(steps):
            return {}, 0
        done = steps[steps["complete"] & steps["wall_ns"].notna()]
        new = len(done) - self._drawn_rows
        self._drawn_rows = len(done)
        self._recent_ms = (done.sort_values("t_begin_ns")["wall_ns"].tail(16) / 1e6).tolist()
        series = {}
        for (config, n_tokens), group in done.groupby(["config", "n_tokens"], sort=False):
            key = str(config) if n_tokens == 1 else f"{config} [{n_tokens}-token]"
            series[key] = (group["context"].tolist(), (group["wall_ns"] / 1e6).tolist(),
                           [f"step {s}, {w / 1e6:.2f} ms" for s, w in zip(group["step"], group["wall_ns"])])
        return series, max(new, 0)

    def _update_steps(self, events: RingEvents | None) -> int:
        series, new = self._points(events)
        if not new:
            return 0
        fig = self.step_figure
        colors = config_colors(series)
        with fig.batch_update():
            drawn = {trace.name: trace for trace in fig.data}
            for key, (x, y, hover) in series.items():
                name = html.escape(key, quote=False)
                x, y, hover = x[-MAX_POINTS_PER_SERIES:], y[-MAX_POINTS_PER_SERIES:], hover[-MAX_POINTS_PER_SERIES:]
                if name in drawn:
                    drawn[name].update(x=x, y=y, hovertext=[html.escape(h, quote=False) for h in hover])
                else:
                    fig.add_scatter(x=x, y=y, mode="markers", name=name, hoverinfo="text",
                                    hovertext=[html.escape(h, quote=False) for h in hover],
                                    marker=dict(size=6, color=colors[key], opacity=0.8))
        return new

    def _update_counters(self, events: RingEvents | None) -> None:
        counts = events.counts if events is not None else {}
        status = events.status() if events is not None else {"state": "waiting for the engine", "lost": 0}
        drawn = sum(len(x) for x, _, _ in self._series.values()) if self.ring_path is None else self._drawn_rows
        steps = len(self.rows) if self.ring_path is None else counts.get("decode_begin", 0)
        speed = ""
        if self._recent_ms:
            median_ms = float(np.median(self._recent_ms))
            speed = f" &middot; recent step <b>{median_ms:.2f} ms</b> ({1e3 / median_ms:.1f} tokens/s)"
        lost = status.get("lost", 0)
        self.counters.value = (
            f"steps <b>{steps}</b> &middot; reallocations <b>{counts.get('gallocr_realloc', 0)}</b> &middot; "
            f"re-reserves <b>{counts.get('sched_reserve', 0)}</b> &middot; syncs <b>{counts.get('sync', 0)}</b> "
            f"&middot; lost events <b style='color:{'#cf222e' if lost else 'inherit'}'>{lost}</b> &middot; "
            f"ring {html.escape(str(status.get('state')))}{speed}")
        if self.total_steps:
            self.progress.max = self.total_steps
            self.progress.value = min(drawn, self.total_steps)
            self.progress.description = f"{self.progress.value}/{self.total_steps}"
        else:
            self.progress.max = max(steps, 1)
            self.progress.value = steps
            self.progress.description = f"{steps} steps"

    def _update_memory(self, events: RingEvents) -> None:
        self._memory_at_buffers = events.counts.get("buffer", 0)
        held = held_now(events.table("buffer"))
        fig = self.memory_figure
        owners = list(dict.fromkeys(held["owner"]))
        raw_locations = list(dict.fromkeys(held["location"]))
        locations = [html.escape(str(v), quote=False) for v in raw_locations]
        with fig.batch_update():
            if [t.name for t in fig.data] != [html.escape(o, quote=False) for o in owners]:
                fig.data = []
                for index, owner in enumerate(owners):
                    fig.add_bar(name=html.escape(owner, quote=False), x=[], y=[],
                                marker_color=category_color(owner.split(" ")[0], index))
            for trace, owner in zip(fig.data, owners):
                part = held[held["owner"] == owner].set_index("location")["bytes"]
                trace.update(x=locations, y=[float(part.get(loc, 0)) / MIB for loc in raw_locations])

    def _update_findings(self, events: RingEvents | None) -> None:
        self._last_findings = time.monotonic()
        seen = len(self.rows) if self.ring_path is None else self._drawn_rows
        if events is None or not events.counts.get("decode_begin") or seen == self._findings_at_rows:
            return
        self._findings_at_rows = seen
        try:
            self.findings = diagnose(Analysis(self._trace_so_far(events)))
        except Exception as exc:  # the analysis of a partial trace may fail; the dashboard keeps going
            self.findings_html.value = f"<i>findings unavailable so far: {html.escape(repr(exc))}</i>"
            return
        if not self.findings:
            self.findings_html.value = "<b>Findings</b>: none so far"
            return
        items = "".join(f"<li><b style='color:{_SEVERITY_COLORS[f.severity]}'>{f.severity}</b> "
                        f"<code>{html.escape(f.id)}</code>" + (f" <b>{html.escape(f.config)}</b>" if f.config else "")
                        + f": {html.escape(f.statement)}"
                        + (f" <i>({html.escape(f.saving_text())})</i>" if f.share is not None else "") + "</li>"
                        for f in self.findings)
        self.findings_html.value = f"<b>Findings</b> (doctor, on what was read so far)<ul>{items}</ul>"

    def _trace_so_far(self, events: RingEvents):
        if self.ring_path is not None:
            return Trace(meta={"source": "live", "ring": events.ring_meta()}, tables=events.tables())
        label = self.session.label if self.session is not None else "live"
        meta = self.session.meta() if self.session is not None else {}
        processes = {"main": {"pid": os.getpid(), "tables": events.tables(), "ring": events.ring_meta()}}
        return build_trace(list(self.rows), processes, label=label, meta={**meta, "source": "live"})

    def _update_status(self, final: bool) -> None:
        if self.error is not None:
            text, color = f"failed: {self.error}", "#cf222e"
        elif self._stop.is_set() and (final or not self.running):
            text, color = "stopped", "#bf8700"
        elif self._paused.is_set():
            text, color = "paused", "#bf8700"
        elif final:
            text, color = "done", "#1a7f37"
        elif self.running or self.ring_path is not None:
            text, color = "running", "#0969da"
        else:
            text, color = "watching", "#0969da"
        self.status.value = f"<span style='color:{color}'>{html.escape(text)}</span>"
        if final:
            self.progress.bar_style = "danger" if self.error else "warning" if self._stop.is_set() else "success"
            self.pause_button.disabled = self.stop_button.disabled = True

    def __repr__(self) -> str:
        return f"Dashboard({self._describe_source()}: {len(self.rows)} steps, {self.refreshes} refreshes)"

