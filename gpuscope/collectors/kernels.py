"""GPU kernel activity from torch's profiler (Kineto), in the process that runs the engine.

Kineto's GPU activity (CUPTI on NVIDIA, rocprofiler-sdk on ROCm builds of torch) sees every kernel launched in
the process, including ggml's and every kernel inside a CUDA graph replay. `KernelProfiler` wraps a workload,
exports Kineto's trace, and turns its kernel / memcpy / memset records into the `kernels` table
(gpuscope.collectors.kernel_table) on the trace's clock:

  Kineto stamps events on its own host clock (epoch nanoseconds). Before and after the workload the profiler
  records a few marker ranges, each bracketed by `time.monotonic_ns()` reads (CLOCK_MONOTONIC, the ring's clock).
  Each marker bounds the offset between the clocks; the intersection of the bounds gives the offset and the
  residual error (half its width), both kept in the trace (meta['kernels']['clock']). The markers measure the host
  clocks; how Kineto maps GPU timestamps onto its host clock is CUPTI's and is not measured here.

Off by default: nothing here runs unless called. `collect_kernels_sweep` (and `gpuscope collect kernels`) runs a
context sweep with a plain pass first and a profiled pass second, so the trace holds the collection's cost.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from gpuscope.collectors.clock import offset_from_bounds
from gpuscope.collectors.kernel_table import empty_kernels, kernel_frame
from gpuscope.errors import CollectorUnavailableError, CuptiConflictError, ProfileFormatError

MARKER_NAME = "gpuscope::clock_marker"
N_MARKERS = 16
KINETO_CATEGORIES = {"kernel": "kernel", "gpu_memcpy": "memcpy", "gpu_memset": "memset"}
# CUPTI takes several activity subscribers from this CUDA version on
_CUPTI_MULTI_SUBSCRIBER = (13, 3)
# libraries and variables through which Nsight tools (and other CUPTI clients) inject themselves
_INJECTION_LIBRARIES = ("libToolsInjection", "libcupti_injection", "libnvperf_target", "libInterceptorInjection")
_INJECTION_VARIABLES = ("CUDA_INJECTION64_PATH", "NSYS_PROFILING_SESSION_ID", "NV_COMPUTE_PROFILER_PERFMON_INJECTION")


# -- what this process offers ------------------------------------------------------------------------------------

def gpu_backend() -> tuple[str, str]:
    """('cuda' | 'rocm', device name prefix as ggml names devices) of this process's torch, or raise saying
    what is missing."""
    try:
        import torch  # the 'torch' extra, loaded only when kernels are collected
    except ImportError:
        raise CollectorUnavailableError(
            "GPU kernel collection needs torch (its profiler records the kernels): pip install 'gpuscope[torch]' "
            "with a CUDA (or ROCm) build of torch") from None
    if getattr(torch.version, "hip", None):
        backend, prefix = "rocm", "ROCm"
    elif getattr(torch.version, "cuda", None):
        backend, prefix = "cuda", "CUDA"
    else:
        raise CollectorUnavailableError(
            f"torch {torch.__version__} is a CPU-only build: GPU kernel collection needs a CUDA or ROCm build of "
            "torch (its profiler's GPU activity)")
    if not torch.cuda.is_available():
        raise CollectorUnavailableError(
            f"torch {torch.__version__} ({backend}) sees no GPU here (torch.cuda.is_available() is False): no "
            "kernel activity to record")
    return backend, prefix


def cupti_conflict() -> str | None:
    """Why another CUPTI client may hold the activity API in this process, or None. Only CUDA before 13.3 allows
    a single subscriber."""
    import torch  # the 'torch' extra

    if getattr(torch.version, "hip", None):
        return None
    version = tuple(int(part) for part in re.findall(r"\d+", torch.version.cuda or "0")[:2])
    if version >= _CUPTI_MULTI_SUBSCRIBER:
        return None
    reasons = [f"${name} is set" for name in _INJECTION_VARIABLES if os.environ.get(name)]
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    reasons += [f"{library} is loaded" for library in _INJECTION_LIBRARIES if library in maps]
    if not reasons:
        return None
    return (f"another CUPTI client is attached to this process ({'; '.join(reasons)}), probably Nsight Systems or "
            f"Nsight Compute; CUDA {torch.version.cuda} allows one CUPTI subscriber (several from CUDA 13.3): run "
            "without the other profiler, or use its kernel timeline instead")


# -- reading Kineto's trace --------------------------------------------------------------------------------------

def read_kineto(trace: dict | str | os.PathLike) -> tuple[list[dict], int]:
    """Kineto's Chrome-trace JSON (as `prof.export_chrome_trace` writes it): (events, base time in ns). Event
    times are `ts` microseconds after `baseTimeNanoseconds` (0 when the trace has none)."""
    if not isinstance(trace, dict):
        try:
            trace = json.loads(Path(trace).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ProfileFormatError(f"{trace}: not a readable Kineto trace ({exc})") from None
    if "traceEvents" not in trace:
        raise ProfileFormatError("not a Kineto trace: no traceEvents")
    return trace["traceEvents"], int(trace.get("baseTimeNanoseconds", 0))


def _ns(ts_us, base_ns: int) -> int:
    # ts is microseconds with three decimals; rounding keeps whole nanoseconds
    return base_ns + int(round(float(ts_us) * 1000.0))


def kineto_activities(events: list[dict], base_ns: int, *, categories: dict[str, str] | None = None,
                      device_prefix: str = "CUDA", offset_ns: int = 0) -> pd.DataFrame:
    """The kernels table from Kineto events of the given categories ({Kineto cat: our category}), timestamps
    moved onto the trace clock by subtracting `offset_ns` (Kineto clock - CLOCK_MONOTONIC)."""
    categories = categories or KINETO_CATEGORIES
    rows: dict[str, list] = {name: [] for name in (
        "ts_ns", "duration_ns", "device", "device_index", "stream", "category", "name", "grid_x", "grid_y",
        "grid_z", "block_x", "block_y", "block_z", "registers", "shared_memory_bytes", "bytes", "copy_kind",
        "correlation", "source")}
    for event in events:
        category = categories.get(event.get("cat"))
        if category is None or event.get("ph") != "X":
            continue
        args = event.get("args") or {}
        device = _integer(args.get("device", event.get("pid")), 0)
        grid = args.get("grid") or [None] * 3
        block = args.get("block") or [None] * 3
        name = str(event.get("name", ""))
        rows["ts_ns"].append(_ns(event["ts"], base_ns) - offset_ns)
        rows["duration_ns"].append(int(round(float(event.get("dur", 0)) * 1000.0)))
        rows["device"].append(f"{device_prefix}{device}")
        rows["device_index"].append(device)
        rows["stream"].append(_integer(args.get("stream", event.get("tid")), -1))
        rows["category"].append(category)
        rows["name"].append(name)
        for axis, (g, b) in zip("xyz", zip(grid, block)):
            rows[f"grid_{axis}"].append(g)
            rows[f"block_{axis}"].append(b)
        rows["registers"].append(args.get("registers per thread"))
        rows["shared_memory_bytes"].append(args.get("shared memory"))
        rows["bytes"].append(args.get("bytes"))
        rows["copy_kind"].append(_copy_kind(name) if category == "memcpy" else None)
        rows["correlation"].append(args.get("correlation"))
        rows["source"].append("torch-kineto")
    if not rows["ts_ns"]:
        return empty_kernels()
    return kernel_frame(rows)


def _integer(value, default: int) -> int:
    if isinstance(value, (int, np.integer)):
        return int(value)
    found = re.search(r"-?\d+", str(value)) if value is not None else None
    return int(found.group()) if found else default


def _copy_kind(name: str) -> str | None:
    found = re.search(r"\b([HDPA]to[HDPA])\b", name)  # "Memcpy HtoD (Pageable -> Device)"
    return found.group(1) if found else None


# -- clock alignment ---------------------------------------------------------------------------------------------

def marker_spans(events: list[dict], base_ns: int, name: str = MARKER_NAME) -> pd.DataFrame:
    """The marker ranges in Kineto's clock, in recording order: start_ns, duration_ns. Only the host side
    (`user_annotation`): with GPU activity Kineto may mirror a range on the GPU timeline (`gpu_user_annotation`)."""
    spans = sorted((_ns(e["ts"], base_ns), int(round(float(e.get("dur", 0)) * 1000.0)))
                   for e in events if e.get("name") == name and e.get("ph") == "X"
                   and e.get("cat") == "user_annotation")
    return pd.DataFrame(spans, columns=["start_ns", "duration_ns"])


def clock_offset(spans: pd.DataFrame, brackets: Sequence[tuple[int, int]]) -> dict:
    """Offset (Kineto clock - CLOCK_MONOTONIC) from markers and the monotonic (before, after) reads around each
    (gpuscope.collectors.clock). A marker that started at Kineto time s and lasted d, taken between monotonic reads
    b and a, started at a monotonic time in [b, a - d]: the offset lies in [s - (a - d), s - b]."""
    if len(spans) != len(brackets) or not len(spans):
        raise ProfileFormatError(f"{len(spans)} clock markers in the profile, {len(brackets)} were recorded: the "
                                 "profile does not belong to this run")
    starts = spans["start_ns"].to_numpy(np.int64)
    durations = spans["duration_ns"].to_numpy(np.int64)
    before = np.array([b for b, _ in brackets], np.int64)
    after = np.array([a for _, a in brackets], np.int64)
    aligned = offset_from_bounds(starts - np.maximum(after - durations, before), starts - before)
    return {**aligned, "marker_bracket_ns_median": int(np.median(after - before))}


# -- the profiler ------------------------------------------------------------------------------------------------

class KernelProfiler:
    """Context manager: torch's profiler with GPU activity around a block of this process; `.kernels` (the
    kernels table on CLOCK_MONOTONIC) and `.meta` afterwards.

    activities: 'gpu' (the default: needs a CUDA/ROCm torch and a GPU) or 'cpu' (torch's CPU ops only: the same
    recording and clock alignment with no GPU, for checking the machinery; `.kernels` is then empty)."""

    def __init__(self, activities: str = "gpu", *, keep_trace: str | os.PathLike | None = None):
        if activities not in ("gpu", "cpu"):
            raise ValueError("activities is 'gpu' or 'cpu'")
        self.activities = activities
        self.keep_trace = Path(keep_trace) if keep_trace else None
        self.kernels = empty_kernels()
        self.meta: dict = {}
        self.events: list[dict] = []
        self._brackets: list[tuple[int, int]] = []
        self._profile = None
        self._stderr = None

    def __enter__(self) -> "KernelProfiler":
        import torch  # the 'torch' extra (gpu_backend checked it is there)
        from torch.profiler import ProfilerActivity, profile

        if self.activities == "gpu":
            self._backend, self._prefix = gpu_backend()
            conflict = cupti_conflict()
            if conflict:
                raise CuptiConflictError(conflict)
            wanted = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
        else:
            self._backend, self._prefix = "cpu", "CPU"
            wanted = [ProfilerActivity.CPU]
        self._profile = profile(activities=wanted)
        with _captured_stderr() as self._stderr:
            self._profile.__enter__()
        self._markers()
        self._started_ns = time.monotonic_ns()
        self._torch = torch
        return self

    def __exit__(self, *exc) -> None:
        self._stopped_ns = time.monotonic_ns()
        self._markers()
        with _captured_stderr() as stopped:
            self._profile.__exit__(None, None, None)
        messages = self._stderr.text + stopped.text
        if "MULTIPLE_SUBSCRIBERS" in messages or "multiple subscribers" in messages.lower():
            raise CuptiConflictError(
                "CUPTI refused torch's profiler: another subscriber (Nsight Systems, Nsight Compute, DCGM "
                f"profiling) holds the activity API. CUPTI said:\n{messages.strip()[-800:]}")
        if exc[0] is not None:
            return
        self._read(messages)

    def _markers(self) -> None:
        from torch.profiler import record_function  # the 'torch' extra

        for _ in range(N_MARKERS // 2):
            before = time.monotonic_ns()
            with record_function(MARKER_NAME):
                pass
            self._brackets.append((before, time.monotonic_ns()))

    def _read(self, messages: str) -> None:
        with tempfile.TemporaryDirectory(prefix="gpuscope-kineto-") as folder:
            path = Path(folder) / "kineto.json"
            self._profile.export_chrome_trace(str(path))
            if self.keep_trace is not None:
                self.keep_trace.write_bytes(path.read_bytes())
            events, base_ns = read_kineto(path)
        self.events = events
        clock = clock_offset(marker_spans(events, base_ns), self._brackets)
        self.kernels = kineto_activities(events, base_ns, device_prefix=self._prefix, offset_ns=clock["offset_ns"])
        counts = self.kernels["category"].value_counts().to_dict()
        self.meta = {
            "collector": "torch-kineto", "torch": self._torch.__version__, "backend": self._backend,
            "cuda": getattr(self._torch.version, "cuda", None), "hip": getattr(self._torch.version, "hip", None),
            "clock": clock, "profiled_from_ns": self._started_ns, "profiled_to_ns": self._stopped_ns,
            "activities": {key: int(value) for key, value in counts.items()},
        }
        if self.activities == "gpu" and not len(self.kernels):
            self.meta["warning"] = ("the profiler recorded no GPU activity: the workload ran nothing on a GPU, or "
                                    "another CUPTI client took the activity API" +
                                    (f" (the profiler said: {messages.strip()[-300:]})" if messages.strip() else ""))


class _Captured:
    text = ""


@contextlib.contextmanager
def _captured_stderr():
    """Capture what native code writes to file descriptor 2 (Kineto/CUPTI warnings), then pass it on."""
    captured = _Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", "replace")
    if captured.text:
        sys.stderr.write(captured.text)
