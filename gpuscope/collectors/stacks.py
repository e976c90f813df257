"""Native CPU stacks of the engine's process, sampled by py-spy (`py-spy record --native`), for a workload's span.

py-spy samples the Python threads of a process (the engine runs on them: llama_decode is called from Python, and
ggml's CPU backend computes on the calling thread too; worker threads that never ran Python are not sampled). Its
Chrome-trace output (`--format chrometrace`) gives, per thread, the stack between consecutive samples with times
relative to when py-spy started. Those times are put on the trace clock (CLOCK_MONOTONIC) with marker spans: the
target runs a uniquely named busy function between two `time.monotonic_ns()` reads before and after the workload;
the samples that fall in and around it bound the offset (residual error: about one sampling interval).

Tables (docs/trace-format.md, "Collector tables"):
  cpu_stacks  one row per span of constant stack on a thread: ts_ns, duration_ns, thread, stack (root;...;leaf),
              leaf, samples (py-spy samples in the span, an estimate from the median interval), category and
              function (attribution below), in_step
  folded(...)  folded stacks: stack, samples, time_ns, first_ns, last_ns

Attribution: the frame nearest the leaf that names a known ggml / llama.cpp function decides: cpu_kernel (ggml
CPU ops and their kernels), wait (barriers, synchronizations, sleeping or blocking in the C library), graph_build,
sched_split (the scheduler splitting the graph), alloc_reserve (graph allocator and scheduler reserve), then
engine_other (inside llama_decode, none of those) and outside_engine.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from gpuscope.collectors.clock import offset_from_bounds
from gpuscope.errors import AttachPermissionError, CollectorError, CollectorUnavailableError, TargetExitedError

MARKER_FUNCTION = "_gpuscope_stack_marker"
MARKER_SECONDS = 0.15
CATEGORIES = ("cpu_kernel", "wait", "graph_build", "sched_split", "alloc_reserve", "engine_other", "outside_engine")
STACK_COLUMNS = ["ts_ns", "duration_ns", "thread", "stack", "leaf", "samples", "category", "function"]

# (category, pattern on one frame's name); checked from the leaf towards the root, first match wins
_ATTRIBUTION = [
    ("wait", r"^ggml_barrier|^ggml_graph_compute_thread_sync|synchronize|^ggml_backend_event_wait"
             r"|^(__)?(futex|pthread_cond_(timed)?wait|sched_yield|nanosleep|clock_nanosleep|__GI___poll|poll"
             r"|epoll_wait|select|recv|__libc_recv|read|__libc_read|usleep|sleep)\b"),
    ("cpu_kernel", r"^ggml_compute_forward|^ggml_vec_|^ggml_gemv|^ggml_gemm|^ggml_cpu_|^llamafile_sgemm|tinyBLAS"
                   r"|^dequantize_row|^quantize_row|^ggml_fp16_to_fp32_row|^ggml_fp32_to_fp16_row|^ggml_v_expf"
                   r"|^ggml_graph_compute_thread|^ggml_compute_"),
    ("graph_build", r"build_graph|build_arch_graph|^llm_graph_|^llm_build_|graph_build|^ggml_new_tensor"
                    r"|^ggml_format_name|graph_get_cb|^ggml_build_forward|^ggml_visit_parents"),
    ("sched_split", r"^ggml_backend_sched_split_graph|^ggml_backend_sched_backend_id|^ggml_backend_sched_set_if"),
    ("alloc_reserve", r"^ggml_gallocr|^ggml_backend_sched_reserve|^ggml_backend_sched_alloc_graph|^ggml_dyn_tallocr"
                      r"|^ggml_backend_buffer_init|^ggml_backend_alloc"),
]
_COMPILED = [(category, re.compile(pattern)) for category, pattern in _ATTRIBUTION]
_ENGINE = re.compile(r"^llama_|^ggml_|^llama_context::|^llm_")


# -- where py-spy is, and letting it attach ----------------------------------------------------------------------

def py_spy_command(py_spy: str | list[str] | None = None) -> list[str]:
    """The py-spy command: given (a path, or a command list such as ['sudo', '-n', 'py-spy']), installed beside
    this Python, or on PATH."""
    if isinstance(py_spy, list):
        return py_spy
    if py_spy:
        return [py_spy]
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.is_file() else shutil.which("py-spy")
    if found is None:
        raise CollectorUnavailableError("py-spy is not installed: pip install py-spy (it ships the binary)")
    return [found]


def allow_any_tracer() -> bool:
    """Let any process of this user ptrace this one (Yama's PR_SET_PTRACER): with kernel.yama.ptrace_scope=1 a
    process cannot trace its parent or a sibling, which py-spy would need for the notebook's own process or a
    session worker. True when the setting applied, False where there is no Yama."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_ptracer, pr_set_ptracer_any = 0x59616D61, ctypes.c_ulong(-1).value
    return libc.prctl(pr_set_ptracer, ctypes.c_ulong(pr_set_ptracer_any), 0, 0, 0) == 0


def _gpuscope_stack_marker(seconds: float = MARKER_SECONDS) -> tuple[int, int]:
    """Busy for `seconds` in a function py-spy will name; returns the monotonic (before, after) reads."""
    before = time.monotonic_ns()
    end = before + int(seconds * 1e9)
    while time.monotonic_ns() < end:
        pass
    return before, time.monotonic_ns()


def stack_marker(_session=None, seconds: float = MARKER_SECONDS) -> tuple[int, int]:
    """The marker, callable as session.run(stack_marker) to run inside a session's worker."""
    return _gpuscope_stack_marker(seconds)


def _tracer_of(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return -1
    found = re.search(r"^TracerPid:\s*(\d+)", status, re.MULTILINE)
    return int(found.group(1)) if found else 0


# -- the sampler -------------------------------------------------------------------------------------------------

class StackSampler:
    """Context manager: py-spy samples process `pid` (default: this one) for the span of the block.

    marker: a function of the marker's seconds that runs it in the target and returns its (before, after)
    monotonic reads (default: `_gpuscope_stack_marker` here, right for pid == this process; for a session's
    worker pass `lambda seconds: session.run(stack_marker, seconds)`). After the block: `.stacks` (the cpu_stacks
    table) and `.meta`."""

    def __init__(self, pid: int | None = None, *, rate: int = 100,
                 marker: Callable[[float], tuple[int, int]] | None = None, py_spy: str | list[str] | None = None,
                 attach_timeout: float = 120.0):
        self.pid = pid or os.getpid()
        self.rate = rate
        self.marker = marker or _gpuscope_stack_marker
        self.command = py_spy_command(py_spy)
        self.attach_timeout = attach_timeout
        self.stacks = pd.DataFrame(columns=STACK_COLUMNS)
        self.meta: dict = {}
        self._brackets: list[tuple[int, int]] = []
        self._marker_seconds = MARKER_SECONDS
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> "StackSampler":
        if _tracer_of(self.pid) < 0:
            raise TargetExitedError(f"process {self.pid} does not exist (it exited before sampling began)")
        self._folder = tempfile.TemporaryDirectory(prefix="gpuscope-pyspy-")
        self._output = Path(self._folder.name) / "stacks.json"
        self._log_path = Path(self._folder.name) / "py-spy.log"
        self._log = open(self._log_path, "w")
        if self.pid == os.getpid():
            allow_any_tracer()
        argv = [*self.command, "record", "--native", "--pid", str(self.pid), "--format", "chrometrace",
                "--output", str(self._output), "--rate", str(self.rate)]
        try:
            self._process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                             start_new_session=True)
        except OSError as exc:
            self._log.close()
            self._folder.cleanup()
            raise CollectorUnavailableError(f"cannot run py-spy ({' '.join(self.command)}): {exc}; install it with "
                                            "pip install py-spy") from None
        self._wait_for_sampling()
        self._brackets += [self.marker(self._marker_seconds)]
        self.meta["workload_from_ns"] = time.monotonic_ns()
        return self

    def _wait_for_sampling(self) -> None:
        """py-spy prints 'Sampling process' once it has read the target's symbols (a second here, tens of seconds
        on a loaded 2-core machine with the engine's libraries). Its samples pause the target through ptrace,
        which shows as the target's TracerPid: the first one is waited for briefly. Where none shows (a platform
        that hides tracers, or slow samples), the clock markers run longer so that samples still fall in them."""
        deadline = time.monotonic() + self.attach_timeout
        while "Sampling process" not in self._log_text():
            self._check_running()
            if time.monotonic() > deadline:
                self._stop()
                raise CollectorError(f"py-spy did not start sampling process {self.pid} within "
                                     f"{self.attach_timeout:.0f} s:\n{self._log_text()}")
            time.sleep(0.01)
        seen_by = time.monotonic() + max(1.0, 50 / self.rate)
        while time.monotonic() < seen_by:
            if self._check_running() > 0:
                return
            time.sleep(0.0005)
        self._marker_seconds = max(MARKER_SECONDS, 200 / self.rate)
        self.meta["first_sample_unseen"] = True

    def _check_running(self) -> int:
        """The target's TracerPid (0: not traced now); raises when py-spy or the target has ended."""
        if self._process.poll() is not None:
            self._fail()
        tracer = _tracer_of(self.pid)
        if tracer < 0:
            self._stop()
            raise TargetExitedError(f"process {self.pid} exited before py-spy took its first sample")
        return tracer

    def __exit__(self, *exc) -> None:
        try:
            self.meta["workload_to_ns"] = time.monotonic_ns()
            target_alive = _tracer_of(self.pid) >= 0
            if target_alive and exc[0] is None:
                self._brackets += [self.marker(self._marker_seconds)]
            self._stop()
            if exc[0] is not None:
                return
            if not self._output.is_file():
                self._fail()
            events = json.loads(self._output.read_text() or "[]")
            try:
                self.stacks, clock = chrometrace_stacks(events, self._brackets)
            except CollectorError as exc:
                if target_alive:
                    raise
                raise TargetExitedError(f"process {self.pid} exited while py-spy sampled it, and what was sampled "
                                        f"cannot be placed on the trace clock: {exc}") from None
            self.meta.update({"collector": "py-spy", "rate": self.rate, "pid": self.pid, "clock": clock,
                              "target_exited": not target_alive, "threads": int(self.stacks["thread"].nunique()),
                              "py_spy": self._log_text()[-400:]})
        finally:
            self._log.close()
            self._folder.cleanup()

    def _stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
            try:
                self._process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def _log_text(self) -> str:
        return self._log_path.read_text(errors="replace")

    def _fail(self):
        text = self._log_text()
        if "Permission Denied" in text or "Operation not permitted" in text or "EPERM" in text:
            raise AttachPermissionError(
                f"py-spy may not attach to process {self.pid} (ptrace permission denied). Run as the same user "
                "with ptrace allowed (kernel.yama.ptrace_scope=0, or CAP_SYS_PTRACE in containers: docker run "
                "--cap-add SYS_PTRACE), or give py_spy=['sudo', '-n', 'py-spy'].\npy-spy said: "
                f"{text.strip()[-400:]}")
        if "Failed to get process executable name" in text or "No such process" in text or \
                "process exited" in text.lower():
            raise TargetExitedError(f"process {self.pid} exited before py-spy could sample it:\n{text.strip()[-400:]}")
        raise CollectorError(f"py-spy failed (exit {self._process.returncode}):\n{text.strip()[-800:]}")


# -- reading py-spy's chrometrace --------------------------------------------------------------------------------

def stack_spans(events: list[dict]) -> pd.DataFrame:
    """Spans of constant stack per thread from py-spy's Chrome trace (B/E events, ts in microseconds since py-spy
    started): rel_start_us, rel_end_us, thread, stack (root;...;leaf)."""
    by_thread: dict = {}
    for event in events:
        if event.get("ph") in ("B", "E"):
            by_thread.setdefault(event.get("tid"), []).append(event)
    rows = []
    for thread, items in by_thread.items():
        stack: list[str] = []
        since = None
        for event in items:  # py-spy writes each thread's events in time order
            ts = float(event["ts"])
            if since is not None and ts > since and stack:
                rows.append((since, ts, thread, ";".join(stack)))
            if event["ph"] == "B":
                stack.append(str(event.get("name", "?")))
            elif stack:
                stack.pop()
            since = ts
    return pd.DataFrame(rows, columns=["rel_start_us", "rel_end_us", "thread", "stack"])


def marker_offset(spans: pd.DataFrame, brackets: list[tuple[int, int]]) -> dict:
    """Monotonic time of py-spy's time zero, from the marker brackets: the first span inside a marker starts at a
    sample taken inside [before, after], after the previous span began (a sample outside it); the first span after
    it starts after `after`. Each marker bounds the origin; the bounds of all markers intersect."""
    if not len(spans):
        raise CollectorError("py-spy recorded no stack (the target was idle in native code py-spy cannot read, or "
                             "exited)")
    in_marker = spans["stack"].str.contains(MARKER_FUNCTION, regex=False).to_numpy()
    starts = spans["rel_start_us"].to_numpy() * 1000.0
    ends = spans["rel_end_us"].to_numpy() * 1000.0
    # contiguous runs of marker spans, in time order, one per marker call
    order = np.argsort(starts, kind="stable")
    runs, current = [], []
    for i in order:
        if in_marker[i]:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    if len(runs) < len(brackets):
        raise CollectorError(f"py-spy caught {len(runs)} of the {len(brackets)} clock markers: sample faster (rate) "
                             "or mark longer; the stacks cannot be placed on the trace clock")
    lows, highs = [], []
    for run, (before, after) in zip(runs[-len(brackets):] if len(runs) > len(brackets) else runs, brackets):
        first_start, last_end = starts[run[0]], ends[run[-1]]
        at = np.searchsorted(starts[order], first_start)
        lows.append(round(max(before - first_start, after - last_end)))
        high = after - first_start
        if at > 0:  # the span before the marker began at a sample taken before `before`
            high = min(high, before - starts[order[at - 1]])
        highs.append(round(high))
    aligned = offset_from_bounds(lows, highs)
    return {"origin_ns": aligned.pop("offset_ns"), **aligned}


def attribute(stack: str) -> tuple[str, str]:
    """(category, deciding function) of one folded stack (root;...;leaf)."""
    frames = stack.split(";")
    for frame in reversed(frames):
        for category, rule in _COMPILED:
            if rule.search(frame):
                return category, frame
    engine = next((frame for frame in reversed(frames) if _ENGINE.search(frame)), None)
    if engine is not None:
        return "engine_other", engine
    return "outside_engine", frames[-1] if frames else ""


def chrometrace_stacks(events: list[dict], brackets: list[tuple[int, int]]) -> tuple[pd.DataFrame, dict]:
    """The cpu_stacks table on CLOCK_MONOTONIC (marker spans removed) and the clock alignment."""
    spans = stack_spans(events)
    clock = marker_offset(spans, brackets)
    spans = spans[~spans["stack"].str.contains(MARKER_FUNCTION, regex=False)]
    starts = np.rint(spans["rel_start_us"].to_numpy() * 1000.0 + clock["origin_ns"]).astype(np.int64)
    durations = np.rint((spans["rel_end_us"] - spans["rel_start_us"]).to_numpy() * 1000.0).astype(np.int64)
    sample_times = np.unique(np.concatenate([spans["rel_start_us"].to_numpy(), spans["rel_end_us"].to_numpy()]))
    interval_ns = float(np.median(np.diff(sample_times)) * 1000.0) if len(sample_times) > 1 else 0.0
    attributed = {stack: attribute(stack) for stack in spans["stack"].unique()}
    stacks = pd.DataFrame({
        "ts_ns": starts, "duration_ns": durations, "thread": spans["thread"].astype(str).to_numpy(),
        "stack": spans["stack"].to_numpy(), "leaf": spans["stack"].str.rsplit(";", n=1).str[-1].to_numpy(),
        "samples": np.maximum(1, np.rint(durations / interval_ns)).astype(np.int64) if interval_ns
        else np.ones(len(spans), np.int64),
        "category": [attributed[s][0] for s in spans["stack"]],
        "function": [attributed[s][1] for s in spans["stack"]],
    }).sort_values("ts_ns", ignore_index=True)
    clock["median_sample_interval_ns"] = int(interval_ns)
    return stacks, clock
