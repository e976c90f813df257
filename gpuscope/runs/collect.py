"""Collectors around a sweep: the kernel profiler and the stack sampler as `Around`s of gpuscope.runs.sweep.

Each runs where the engine runs (inside an isolated session's worker too), around the configuration's whole
workload, and returns its table on the trace clock; the sweep joins it to the steps and names the configuration.

    trace = sweep(configs, model, around=KernelCollection(), out="k.trace")   # `gpuscope collect kernels`
    trace = sweep(configs, model, around=StackCollection(rate=100))           # `gpuscope collect stacks`
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd

from gpuscope.analysis.kernels import collection_cost
from gpuscope.collectors.kernels import KernelProfiler, gpu_backend
from gpuscope.collectors.stacks import StackSampler, allow_any_tracer, stack_marker
from gpuscope.units import duration, share as share_text


@dataclass
class KernelCollection:
    """GPU kernels, copies and sets from torch's profiler; with baseline=True each configuration's workload runs
    once plain first (steps tagged kernel_profiler='off', then 'on'), so the profiler's own cost is measured."""

    baseline: bool = True
    table: str = "kernels"
    table_meta: str = "kernels"
    workload: dict = field(init=False)

    def __post_init__(self):
        self.workload = {"kernels": True, "baseline": self.baseline}

    def check(self, isolate: bool) -> None:
        if not isolate:  # an isolated worker checks in its own process, before its plain pass
            gpu_backend()

    def run(self, session, loop: Callable, *args) -> tuple[pd.DataFrame, dict]:
        kernels, meta = session.run(_profiled_workload, loop, args, self.baseline)
        meta["cost"] = collection_cost(session.steps)
        return kernels, meta

    def summary(self, frame: pd.DataFrame, meta: dict) -> str:
        return (f"{len(frame)} GPU activities, clock residual {duration(meta['clock']['residual_ns'])}"
                f"{' (plain pass, then profiled)' if self.baseline else ''}")


def _profiled_workload(session, loop: Callable, args: tuple, baseline: bool) -> tuple:
    """Runs where the engine runs: the workload once plain (steps tagged kernel_profiler='off') and once under the
    profiler ('on'); returns (kernels, meta)."""
    gpu_backend()  # fail before the plain pass when profiling cannot happen
    if baseline:
        with session.tagged(kernel_profiler="off"):
            loop(session, *args)
    with session.tagged(kernel_profiler="on"):
        with KernelProfiler() as profiler:
            # plans are reported once per ring: the plain pass made them; report them again inside the window
            session.engine.ggml.forget_reported_plans()
            loop(session, *args)
    return profiler.kernels, profiler.meta


@dataclass
class StackCollection:
    """Native CPU stacks of the engine's process sampled by py-spy at `rate` Hz: this process for an in-process
    session, the worker for an isolated one."""

    rate: int = 100
    py_spy: str | list[str] | None = None
    table: str = "cpu_stacks"
    table_meta: str = "stacks"
    workload: dict = field(default_factory=lambda: {"stacks": True})

    def check(self, isolate: bool) -> None:
        """py-spy is found (or refused) when the sampler starts: nothing to check before."""

    def run(self, session, loop: Callable, *args) -> tuple[pd.DataFrame, dict]:
        if not session.in_process:
            pid = session.processes()["main"]["pid"]
            session.run(_allow_tracer_in_worker)
            marker = lambda seconds: session.run(stack_marker, seconds)  # noqa: E731 (runs in the worker)
        else:
            pid, marker = os.getpid(), None
        with StackSampler(pid, rate=self.rate, marker=marker, py_spy=self.py_spy) as sampler:
            session.run(loop, *args)
        return sampler.stacks, sampler.meta

    def summary(self, frame: pd.DataFrame, meta: dict) -> str:
        share = frame.groupby("category")["duration_ns"].sum() / max(int(frame["duration_ns"].sum()), 1)
        return f"{len(frame)} stack spans at {self.rate} Hz; " + ", ".join(
            f"{name} {share_text(value)}" for name, value in share.sort_values(ascending=False).items())


def _allow_tracer_in_worker(_session) -> bool:
    return allow_any_tracer()
