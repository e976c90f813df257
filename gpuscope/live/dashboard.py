"""The live dashboard: ipywidgets and plotly FigureWidgets that follow an engine while it decodes.

    dash = gpuscope.live(session)
    dash.run(sweep_loop, [0, 512, 1024], 32)   # the workload runs in a background thread of this kernel
    dash.wait()                                # (optional) block until it is done

    dash = gpuscope.live("/dev/shm/server.ring")   # another process's ring, e.g. llama-server under gpuscope

A refresh thread reads the ring with its own reader a few times a second and updates: step time against context
per configuration with its rolling median, a warning when the steps scatter as on a busy machine (the doctor's
`measurement.noisy` thresholds), counters (steps, reallocations, re-reserves, syncs, lost events), memory held now
per device (the last held once everything is freed) and each configuration's last and peak memory, the doctor's
latest findings, and a progress bar. Pause holds the workload between two steps; Stop ends it at the next
step boundary (the engine is never interrupted inside a step). Attached to another process's ring, Pause freezes
the display and Stop detaches; the other process is never touched.
"""
from __future__ import annotations

import html
import threading
import time
import traceback
from typing import Callable

import ipywidgets as w
import numpy as np
import plotly.graph_objects as go
from IPython import get_ipython
from IPython.display import display

import pandas as pd

from gpuscope.analysis.facade import Analysis
from gpuscope.analysis.memory import held_now
from gpuscope.analysis.noise import OUTLIER_RATIO, noise_of, rolling_level
from gpuscope.doctor.rules import diagnose, is_noisy
from gpuscope.errors import ReportError
from gpuscope.live.events import memory_per_config
from gpuscope.live.sources import Steps, source_for
from gpuscope.plots.style import config_colors, owner_color
from gpuscope.runs.verify import DEFAULT_ROUNDS, verify
from gpuscope.session.workloads import sweep_loop
from gpuscope.trace.model import Trace
from gpuscope.trace.ringtap import RingTap
from gpuscope.markup import table
from gpuscope.units import MIB, duration, number, share, times

MAX_POINTS_PER_SERIES = 20_000  # the oldest points of a very long run leave the plot, not the trace
REFRESH_BOUND_S = 60.0  # the longest wait() waits for the last refresh once the workload ended
MEDIAN = " · rolling median"  # the name of a configuration's median line, after its own
_SEVERITY_COLORS = {"critical": "#cf222e", "warning": "#bf8700", "info": "#0969da"}


class WorkloadStopped(Exception):
    """Raised at a step boundary inside the dashboard's workload thread when Stop was pressed."""


class Dashboard:
    """A live view of a session (in this process), of this process's engine (for `sweep`), or of a ring file.

    source: a Session (or an isolated one), None (this process's engine: use `sweep`), or a ring path. Pause and
    Stop hold the workload of an in-process session or sweep; over an isolated session or another process's ring
    they only freeze or end the display.
    interval_s: seconds between refreshes; findings_every_s: seconds between runs of the doctor over what was read
    so far; show: display the widgets now (in a notebook)."""

    def __init__(self, source=None, *, interval_s: float = 0.25, findings_every_s: float = 5.0,
                 title: str | None = None, show: bool = True):
        self.interval_s = interval_s
        self.findings_every_s = findings_every_s
        self.started_ns = time.monotonic_ns()
        self.refreshes = 0
        self.refresh_seconds = 0.0  # CPU time the refresh thread spent refreshing (the dashboard's own cost)
        self.refreshes_with_new_steps = 0
        self.result = None
        self.error: BaseException | None = None
        self.findings: list = []
        self.total_steps: int | None = None
        self._last_findings = 0.0
        self._memory_at_buffers = 0  # buffer events the memory figure was drawn from
        self._findings_at_steps = -1
        self._paused = threading.Event()
        self._stop = threading.Event()
        self._closing = threading.Event()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self.source = source_for(source, self.started_ns, self._hold)
        self._build_widgets(title or self.source.title)
        self._refresher = threading.Thread(target=self._refresh_loop, name="gpuscope-dashboard", daemon=True)
        self._refresher.start()
        if show:
            self.display()

    @property
    def rows(self) -> list[dict]:
        """The steps the session or sweep reported so far (none for another process's ring)."""
        return self.source.rows

    @property
    def events(self) -> RingTap | None:
        """The ring read so far (its own tap: reading takes nothing from a session's trace); None before there is
        one."""
        with self._lock:
            return self.source.tap()

    # -- widgets -------------------------------------------------------------------------------------------------

    def _build_widgets(self, title: str) -> None:
        self.title = w.HTML(f"<b>gpuscope live</b> &middot; {html.escape(title)}")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="steps", bar_style="info",
                                      layout=w.Layout(width="320px"))
        self.pause_button = w.Button(description="Pause", icon="pause", layout=w.Layout(width="100px"))
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="danger",
                                    layout=w.Layout(width="100px"))
        self.verify_button = w.Button(description="Verify", icon="check", disabled=True,
                                      tooltip="re-run the finished sweep with each finding's first remedy, "
                                              "interleaved with it as recorded, and show the measured savings",
                                      layout=w.Layout(width="100px"))
        self.pause_button.on_click(lambda _: self.resume() if self._paused.is_set() else self.pause())
        self.stop_button.on_click(lambda _: self.stop())
        self.verify_button.on_click(lambda _: self.verify())
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
        self.noise_html = w.HTML("")  # the warning that the machine looks busy, while it does
        self.memory_html = w.HTML("")  # each configuration's last and peak memory, kept after it freed them
        self.findings_html = w.HTML("<i>findings appear after the first steps</i>")
        self.widget = w.VBox([
            self.title, w.HBox([self.progress, self.pause_button, self.stop_button, self.verify_button, self.status]),
            self.counters, self.noise_html,
            w.HBox([self.step_figure, self.memory_figure]), self.memory_html, self.findings_html])

    def display(self) -> None:
        if get_ipython() is not None:
            display(self.widget)

    # -- the workload --------------------------------------------------------------------------------------------

    def _hold(self) -> None:
        """A step boundary of an engine the dashboard controls: its workload waits while paused, ends when stopped."""
        if threading.current_thread() is not self._worker:
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
        work = self.source.workload(workload, args, kwargs)
        if total_steps is None and workload is sweep_loop and len(args) >= 2:
            total_steps = len(set(args[0])) * int(args[1])
        self._start(work, total_steps)

    def sweep(self, configs, model=None, *, depths=(0, 512, 1024), n_steps: int = 16, **options) -> None:
        """gpuscope.runs.sweep in a background thread, drawing every configuration as it is measured;
        the combined trace is `result` once done (wait())."""
        configs = list(configs)
        self._start(self.source.sweep(configs, model, depths, n_steps, options),
                    len(configs) * len(set(depths)) * n_steps)

    def verify(self, rounds: int = DEFAULT_ROUNDS) -> None:
        """Measure the findings' remedies on the finished workload's trace (gpuscope.runs.verify) in a background
        thread, then show predicted and verified side by side; wait() returns when it is done."""
        if not isinstance(self.result, Trace):
            raise ReportError("verify() needs a finished workload that returned a trace (a sweep: gpuscope.live()"
                              ".sweep(...))")
        trace = self.result

        def work():
            analysis = Analysis(trace)
            self.findings = verify(analysis, diagnose(analysis), rounds=rounds)
            self._show_findings("the doctor on the finished run, its remedies measured")
            return trace

        self.verify_button.disabled = True
        self._start(work, None)

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
        # the last refresh runs the doctor on the whole run: seconds on a loaded machine (a bound, not a deadline)
        self._refresher.join(max(REFRESH_BOUND_S, 4 * self.interval_s + self.findings_every_s))
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
            self.source.close()

    def _finished(self) -> bool:
        if self._worker is not None:
            return not self._worker.is_alive()
        return self.source.finished()

    def refresh(self, final: bool = False) -> None:
        """Read what is new and update every widget (the refresh thread calls this; it is safe to call by hand)."""
        started = time.thread_time()
        with self._lock:
            tap = self.source.tap()
            if tap is not None and not (self._paused.is_set() and self._worker is None):
                tap.poll()
            steps = self.source.steps()
            new_steps = self._update_steps(steps)
            self._update_counters(tap, steps)
            if tap is not None and tap.counts.get("buffer", 0) != self._memory_at_buffers:
                self._update_memory(tap)
            if final or (new_steps and time.monotonic() - self._last_findings >= self.findings_every_s):
                self._update_findings(tap, steps)
            self._update_status(final)
            self.refreshes += 1
            self.refreshes_with_new_steps += bool(new_steps)
            self.refresh_seconds += time.thread_time() - started

    def _update_steps(self, steps: Steps) -> int:
        if not steps.new:
            return 0
        fig = self.step_figure
        colors = config_colors(steps.series)
        noisy = {}
        with fig.batch_update():
            drawn = {trace.name: trace for trace in fig.data}
            for key, (x, y, hover) in steps.series.items():
                name = html.escape(key, quote=False)
                x, y, hover = x[-MAX_POINTS_PER_SERIES:], y[-MAX_POINTS_PER_SERIES:], hover[-MAX_POINTS_PER_SERIES:]
                # None where a series is too short for a median: NaN is not JSON, and the widget's message would fail
                level = [v if v == v else None for v in rolling_level(y).tolist()]
                if name in drawn:
                    drawn[name].update(x=x, y=y, hovertext=[html.escape(h, quote=False) for h in hover])
                    drawn[name + MEDIAN].update(x=x, y=level)
                else:
                    fig.add_scatter(x=x, y=y, mode="markers", name=name, hoverinfo="text",
                                    hovertext=[html.escape(h, quote=False) for h in hover],
                                    marker=dict(size=6, color=colors[key], opacity=0.8))
                    fig.add_scatter(x=x, y=level, mode="lines", name=name + MEDIAN, hoverinfo="skip",
                                    line=dict(color=colors[key], width=2))
                noise = noise_of(y)
                if noise is not None and is_noisy(noise):
                    noisy[key] = noise
        self._show_noise(noisy)
        return steps.new

    def _show_noise(self, noisy: dict[str, dict]) -> None:
        """Say so while a configuration's steps scatter as a busy machine makes them."""
        if not noisy:
            self.noise_html.value = ""
            return
        parts = "; ".join(f"<b>{html.escape(key)}</b>: {n['outliers']} of {n['steps']} steps over "
                          f"{times(OUTLIER_RATIO)} their neighbours' median, scatter {share(n['scatter_share'])}"
                          for key, n in noisy.items())
        self.noise_html.value = (f"<span style='color:#bf8700'>&#9888; step times are noisy ({parts}): the machine "
                                 "looks busy, and these measurements are unreliable</span>")

    def _update_counters(self, tap: RingTap | None, steps: Steps) -> None:
        counts = tap.counts if tap is not None else {}
        ring = tap.ring_meta() if tap is not None else {}
        state = ring.get("state", "waiting for the ring" if tap is not None else "waiting for the engine")
        speed = ""
        if steps.recent_ms:
            median_ms = float(np.median(steps.recent_ms))
            speed = f" &middot; recent step <b>{duration(median_ms * 1e6)}</b> ({number(1e3 / median_ms)} tokens/s)"
        lost = ring.get("lost", 0)
        self.counters.value = (
            f"steps <b>{steps.begun}</b> &middot; reallocations <b>{counts.get('gallocr_realloc', 0)}</b> &middot; "
            f"re-reserves <b>{counts.get('sched_reserve', 0)}</b> &middot; syncs <b>{counts.get('sync', 0)}</b> "
            f"&middot; lost events <b style='color:{'#cf222e' if lost else 'inherit'}'>{lost}</b> &middot; "
            f"ring {html.escape(str(state))}{speed}")
        if self.total_steps:
            self.progress.max = self.total_steps
            self.progress.value = min(steps.drawn, self.total_steps)
            self.progress.description = f"{self.progress.value}/{self.total_steps}"
        else:
            self.progress.max = max(steps.begun, 1)
            self.progress.value = steps.begun
            self.progress.description = f"{steps.begun} steps"

    def _update_memory(self, tap: RingTap) -> None:
        self._memory_at_buffers = tap.counts.get("buffer", 0)
        buffer = tap.table("buffer")
        rows = self.rows
        if rows:
            steps = pd.DataFrame(rows, columns=["config", "t_begin_ns", "t_end_ns"])
            per_config = memory_per_config(buffer, steps)
            self.memory_html.value = ("<b>Memory per configuration</b> (held at its last step, and its peak)"
                                      + table(per_config) if len(per_config) else "")
        held = held_now(buffer)
        fig = self.memory_figure
        if not len(held):  # everything freed (a sweep's sessions closed): the last bars stay, said so
            fig.layout.title.text = "Memory last held (none held now)"
            return
        fig.layout.title.text = "Memory held now"
        owners = list(dict.fromkeys(held["owner"]))
        raw_locations = list(dict.fromkeys(held["location"]))
        locations = [html.escape(str(v), quote=False) for v in raw_locations]
        with fig.batch_update():
            if [t.name for t in fig.data] != [html.escape(o, quote=False) for o in owners]:
                fig.data = []
                for index, owner in enumerate(owners):
                    fig.add_bar(name=html.escape(owner, quote=False), x=[], y=[],
                                marker_color=owner_color(owner, index))
            for trace, owner in zip(fig.data, owners):
                part = held[held["owner"] == owner].set_index("location")["bytes"]
                trace.update(x=locations, y=[float(part.get(loc, 0)) / MIB for loc in raw_locations])

    def _update_findings(self, tap: RingTap | None, steps: Steps) -> None:
        self._last_findings = time.monotonic()
        if tap is None or not tap.counts.get("decode_begin") or steps.done == self._findings_at_steps:
            return
        self._findings_at_steps = steps.done
        try:
            self.findings = diagnose(Analysis(self.source.trace_so_far()))
        except Exception as exc:  # the analysis of a partial trace may fail; the dashboard keeps going
            self.findings_html.value = f"<i>findings unavailable so far: {html.escape(repr(exc))}</i>"
            return
        self._show_findings("doctor, on what was read so far")

    def _show_findings(self, what: str) -> None:
        if not self.findings:
            self.findings_html.value = "<b>Findings</b>: none so far"
            return
        items = "".join(f"<li><b style='color:{_SEVERITY_COLORS[f.severity]}'>{f.severity}</b> "
                        f"<code>{html.escape(f.id)}</code>" + (f" <b>{html.escape(f.config)}</b>" if f.config else "")
                        + f": {html.escape(f.statement)}"
                        + (f" <i>({html.escape(f.saving_text())})</i>" if f.share is not None else "")
                        + (f"<br>verified: {html.escape(f.verified_text())}" if f.verified else "") + "</li>"
                        for f in self.findings)
        self.findings_html.value = f"<b>Findings</b> ({html.escape(what)})<ul>{items}</ul>"

    def _update_status(self, final: bool) -> None:
        if self.error is not None:
            text, color = f"failed: {self.error}", "#cf222e"
        elif self._stop.is_set() and (final or not self.running):
            text, color = "stopped", "#bf8700"
        elif self._paused.is_set():
            text, color = "paused", "#bf8700"
        elif final:
            text, color = "done", "#1a7f37"
        else:
            text, color = "running" if self.running else self.source.idle_status, "#0969da"
        self.status.value = f"<span style='color:{color}'>{html.escape(text)}</span>"
        if final:
            self.progress.bar_style = "danger" if self.error else "warning" if self._stop.is_set() else "success"
            self.pause_button.disabled = self.stop_button.disabled = True
            self.verify_button.disabled = not isinstance(self.result, Trace)

    def __repr__(self) -> str:
        return f"Dashboard({self.source.title}: {len(self.rows)} steps, {self.refreshes} refreshes)"

