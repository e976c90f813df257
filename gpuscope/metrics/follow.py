"""Following one ring for the exporter, through everything a ring does in a fleet: not there yet (a writer creates
it lazily), alive, its writer exiting or crashing, removed, replaced by a new engine's ring at the same path, or a
file that is no ring at all. None of these stops the exporter: each change of state is one line (`say`) and the
`writer_state` series, and the other rings are followed as before.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from gpuscope.errors import RingError
from gpuscope.log import say
from gpuscope.metrics.capture import CapturePolicy, RecordWindow, write_capture
from gpuscope.metrics.meter import KINDS, Fired, Meter
from gpuscope.metrics.series import RING_LABELS, UNKNOWN, WRITER_STATES, Series
from gpuscope.ring.reader import RingReader, open_when_ready
from gpuscope.trace.model_bytes import command_model, flag_value
from gpuscope.trace.standalone import engine_op_names, program_engine_meta, standalone_meta

# the flags of llama.cpp's common arguments that make a configuration (the doctor's remedies change these too)
CONFIG_FLAGS = (("-ngl", "--gpu-layers", "--n-gpu-layers"), ("-fa", "--flash-attn"), ("-ctk", "--cache-type-k"),
                ("-ctv", "--cache-type-v"), ("-sm", "--split-mode"), ("-ts", "--tensor-split"), ("-dev", "--device"),
                ("-b", "--batch-size"), ("-ub", "--ubatch-size"), ("-t", "--threads"))
CONFIG_SWITCHES = ("-nkvo", "--no-kv-offload")


def config_label(command: list[str]) -> str:
    """The configuration a llama.cpp program's command line asks for, as a short label ('-ngl 99 -fa on'), or
    'default'."""
    parts = [f"{flags[0]} {value}" for flags in CONFIG_FLAGS if (value := flag_value(command, flags)) is not None]
    parts += [CONFIG_SWITCHES[0]] if any(arg in CONFIG_SWITCHES for arg in command) else []
    return " ".join(parts) or "default"


def writer_facts(pid: int) -> dict:
    """What the writer's process says about itself while it runs: its command line, program and engine build."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
        program = os.readlink(f"/proc/{pid}/exe")
        environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    except OSError:  # gone already, or another user's
        return {"command": None, "program": None, "engine": {}}
    env = dict(entry.split("=", 1) for entry in environ if "=" in entry)
    return {"command": command, "program": program, "engine": program_engine_meta(program, env)}


def build_label(engine: dict) -> str:
    """A gpuscope build as its folder names it (name and key: 'cpu-f5cd4312dc2e'), else 'unknown'."""
    if not engine.get("name"):  # not a gpuscope build: nothing says which one
        return UNKNOWN
    return "-".join(str(part) for part in (engine["name"], engine.get("key")) if part)


class RingFollower:
    """One ring path: its reader while there is a ring, its series, and its captures."""

    def __init__(self, path: Path, series: Series, *, capture: CapturePolicy | None = None):
        self.path = path
        self.name = path.name.removesuffix(".ring")
        self.series = series
        self.capture = capture
        self.reader: RingReader | None = None
        self.state = "waiting"
        self._meter: Meter | None = None
        self._window: RecordWindow | None = None
        self._facts: dict = {}
        # until a ring is open only its name is known
        self._labels = tuple(series.label(name, self.name if name == "ring" else UNKNOWN) for name in RING_LABELS)
        self._ring_identity: tuple | None = None  # the ring file read now (a new one may take its path)
        self._bad_identity: tuple | None = None  # the file that was no readable ring, not retried until it changes
        self._counted = {"read": 0, "lost": 0, "strings": 0, "records": 0}
        self._last_capture: dict[str, float] = {}
        self._standalone: dict | None = None
        self._crash_seen = False
        self.captures: list[Path] = []
        self._set_state("waiting", quiet=True)

    # -- states ------------------------------------------------------------------------------------------------

    def _set_state(self, state: str, message: str | None = None, quiet: bool = False) -> None:
        if state != self.state and not quiet:
            say(f"gpuscope metrics: {self.path}: {message or state}")
        self.state = state
        gauge = self.series["writer_state"]
        for each in WRITER_STATES:
            gauge.labels(*self._labels, each).set(1.0 if each == state else 0.0)

    def _forget_state(self) -> None:
        """Remove the writer_state series of the labels so far: before its writer was known, or the last ring's."""
        for each in WRITER_STATES:
            try:
                self.series["writer_state"].remove(*self._labels, each)
            except KeyError:
                pass

    def _open(self) -> bool:
        identity = _identity(self.path)
        if identity is None or identity == self._bad_identity:
            return False
        try:
            reader = open_when_ready(self.path)
        except RingError as exc:
            self._bad_identity = identity
            self._set_state("error", f"not followed: {self._reason(exc)}")
            return False
        if reader is None:
            return False
        self.reader = reader
        self._ring_identity = identity
        self._facts = writer_facts(reader.header.writer_pid)
        command = self._facts["command"] or []
        model = command_model(command)
        labels = {"ring": self.name, "model": Path(model).stem if model else UNKNOWN,
                  "config": config_label(command) if command else UNKNOWN,
                  "build": build_label(self._facts["engine"])}
        self._meter = Meter(self.series, labels, op_names=engine_op_names(self._facts["engine"]),
                            slow_step_s=self.capture.step_ms / 1e3 if self.capture and self.capture.step_ms else None)
        self._forget_state()
        self._labels = self._meter.ring_values
        self._window = RecordWindow(reader, self.capture.seconds) if self.capture else None
        self._counted = {"read": 0, "lost": 0, "strings": 0, "records": 0}
        self._standalone = None
        self._crash_seen = False
        self.state = "waiting"
        self._set_state(reader.status.state, f"following the ring of pid {reader.header.writer_pid} "
                                             f"({labels['model']}, {labels['config']}, build {labels['build']})")
        return True

    def _close(self, state: str, message: str) -> None:
        if self.reader is not None:
            self.reader.close()
        self.reader = None
        self._set_state(state, message)

    # -- one poll ----------------------------------------------------------------------------------------------

    def poll(self) -> None:
        """Read what the writer committed since the last poll into the series; never raises for a bad ring."""
        if self.reader is None and not self._open():
            return
        reader = self.reader
        try:
            records = reader.drain()
            status = reader.status
        except RingError as exc:
            self._finish_ring()
            if _identity(self.path) not in (None, self._ring_identity):  # replaced: the new ring is opened next poll
                self._close("waiting", "replaced by a new ring; following the new one")
            else:
                self.fail(f"stopped following: {self._reason(exc)}")
            return
        now_ns = time.monotonic_ns()
        fired: list[Fired] = []
        if records.size:
            if self._window is not None:
                self._window.add(records)
            wanted = np.isin(records["kind"], [k for k, name in reader.schema.kinds.items() if name in KINDS])
            fired += self._meter.feed(reader.decode(records[wanted]), now_ns)
        else:
            fired += self._meter.feed({}, now_ns)
        self._account(status)
        if status.state == "crashed" and not self._crash_seen:  # also a crash from before the ring was followed
            self._crash_seen = True
            fired.append(Fired("crash", f"the writer (pid {status.pid}) crashed"
                                        + (f" with signal {status.crash_signal}" if status.crash_signal else "")))
        if status.state != self.state:
            words = _STATE_WORDS.get(status.state, status.state)
            self._set_state(status.state, f"the writer (pid {status.pid}) {words}")
        if status.state != "alive" and status.pending == 0:
            fired += self._meter.finish(now_ns)
        self._captures(fired)
        at_path = _identity(self.path)
        if status.state != "alive" and status.pending == 0 and at_path != self._ring_identity:
            # everything was read and the ring is gone (the engine removed it) or another file took its place
            self._close("gone" if at_path is None else "waiting",
                        "the ring was removed; waiting for a new one at this path" if at_path is None
                        else "replaced by a new ring; following the new one")

    def _reason(self, exc: Exception) -> str:
        """A ring error's message without the path it starts with (each line names the ring once)."""
        return str(exc).removeprefix(f"{self.path}: ")

    def fail(self, message: str) -> None:
        """Stop following after an error of the exporter's own: said once, retried when another file appears."""
        self._bad_identity = _identity(self.path)
        self._close("error", message)

    def _finish_ring(self) -> None:
        if self._meter is not None:
            self._captures(self._meter.finish(time.monotonic_ns()))

    def _account(self, status) -> None:
        """Add the reader's accounting since the last poll to the ring series."""
        now = {"read": status.read, "lost": status.lost, "strings": status.strings_dropped,
               "records": status.writer_dropped}
        for key, name, extra in (("read", "ring_events", ()), ("lost", "ring_lost_events", ()),
                                 ("strings", "ring_dropped", ("strings",)), ("records", "ring_dropped", ("records",))):
            delta = now[key] - self._counted[key]
            if delta > 0:
                self.series[name].labels(*self._labels, *extra).inc(delta)
        self._counted = now

    # -- captures ----------------------------------------------------------------------------------------------

    def _captures(self, fired: list[Fired]) -> None:
        if self.capture is None or self.reader is None:
            return
        for event in fired:
            if event.reason not in self.capture.reasons:
                continue
            last = self._last_capture.get(event.reason)
            if last is not None and time.monotonic() - last < self.capture.every_s:
                self.series["captures_skipped"].labels(*self._labels, event.reason).inc()
                continue
            self._last_capture[event.reason] = time.monotonic()
            if self._standalone is None:  # once per ring: the model's header and the engine's op names
                command = self._facts["command"] or []
                self._standalone = {"command": self._facts["command"], "program": self._facts["program"],
                                    **standalone_meta(command_model(command), self._facts["engine"])}
            try:
                path = write_capture(self.capture, self.reader, self._window, ring_name=self.name,
                                     reason=event.reason, detail=event.detail, meta=self._standalone)
            except OSError as exc:
                say(f"gpuscope metrics: {self.path}: could not write a capture ({event.reason}): {exc}")
                continue
            self.captures.append(path)
            self.series["captures"].labels(*self._labels, event.reason).inc()
            say(f"gpuscope metrics: {self.path}: {event.detail}: captured the last {self.capture.seconds:g} s "
                f"in {path}")

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None


_STATE_WORDS = {"alive": "is running", "exited": "exited without closing its ring", "crashed": "crashed",
                "closed": "closed its ring"}


def _identity(path: Path) -> tuple | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino

