"""The one sweep: step time against context depth for several split configurations, as one trace.

Every run that measures configurations goes through `sweep`: the CLI's `gpuscope sweep` and `gpuscope collect`,
the dashboard's sweep, the demo and the benchmarks. It checks every configuration before the first one loads
(distinct labels, context sizes, devices), and takes what to wrap around each configuration's workload (`Around`:
a profiler or a sampler, gpuscope.runs.collect) so that collection keeps the same checks.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence

import pandas as pd
from tqdm.auto import tqdm

from gpuscope.errors import EngineCrashedError, SplitConfigError
from gpuscope.log import say
from gpuscope.models import default_model
from gpuscope.session.binding import resolve_engine
from gpuscope.session.config import SplitConfig
from gpuscope.session.model_info import read_model_info
from gpuscope.session.protocol import open_session
from gpuscope.session.session import Engine
from gpuscope.session.workloads import DEFAULT_DEPTHS, DEFAULT_STEPS, sweep_loop
from gpuscope.trace.combine import combine
from gpuscope.trace.model import Trace, save_trace
from gpuscope.trace.steps import join_to_steps


class Around(Protocol):
    """What a sweep wraps around each configuration's workload, in the process that runs the engine."""

    table: str       # the trace table it adds (one frame per configuration, with ts_ns)
    table_meta: str  # the trace metadata key its per-configuration metadata goes under
    workload: dict   # what it adds to meta['workload']

    def check(self, isolate: bool) -> None:
        """Refuse, before any configuration loads, what cannot be collected."""

    def run(self, session, loop: Callable, *args) -> tuple[pd.DataFrame, dict]:
        """`session.run(loop, *args)` under the collector: its table and metadata."""

    def summary(self, frame: pd.DataFrame, meta: dict) -> str:
        """One line on what was collected for a configuration."""


def sweep(configs: Iterable[SplitConfig | dict], model: str | os.PathLike | None = None, *,
          engine: str | os.PathLike | None = None, depths: Sequence[int] = DEFAULT_DEPTHS,
          n_steps: int = DEFAULT_STEPS, isolate: bool = False, progress: bool = True,
          out: str | os.PathLike | None = None, on_step: Callable[[dict], None] | None = None,
          around: Around | None = None, seed: int = 0, **session_options) -> Trace:
    """Step time against context depth for each configuration; one trace with a `config` column.

    Every configuration is checked before the first one loads. With isolate=True each configuration runs in its
    own worker: one that crashes leaves its steps and events in the trace (meta['crashed']) and the sweep goes on;
    one whose engine dies while loading is listed in meta['failed']. on_step(row) is called after every step of
    every configuration (live dashboards). around: what to wrap around each configuration's workload in the
    engine's process (gpuscope.runs.collect: the kernel profiler, the stack sampler); its table joins the trace
    with `config` and `in_step`, its metadata (with `outside_steps`: rows that started outside every step) goes to
    meta[around.table_meta]. seed: the decoded tokens' seed
    (rounds of the same sweep decode other tokens)."""
    configs = [c if isinstance(c, SplitConfig) else SplitConfig.from_dict(c) for c in configs]
    model = Path(model) if model is not None else default_model()
    n_ctx_train = read_model_info(model).n_ctx_train
    configs, depths = _check_sweep(configs, depths, n_steps, n_ctx_train)
    if around is not None:
        around.check(isolate)
    if not isolate:  # devices are known once the engine is loaded: check them all before the first model loads
        devices = [d.spec() for d in Engine.acquire(resolve_engine(engine)).local_devices()]
        for config in configs:
            config.check_against(devices, n_ctx_train)
    bar = SweepProgress(len(configs) * len(depths) * n_steps, enabled=progress)
    pieces: list[Trace] = []
    failed: list[dict] = []
    workload = {"name": "sweep", "depths": list(depths), "n_steps": n_steps, **(around.workload if around else {})}
    collected: dict[str, dict] = {}
    try:
        for config in configs:
            bar.start_config(config.label)
            try:
                session = open_session(model, config, engine=engine, isolate=isolate, **session_options)
            except EngineCrashedError as exc:
                bar.write(f"gpuscope sweep: configuration {config.label!r}: {exc}")
                failed.append({"config": config.label, "error": str(exc)})
                continue
            session.add_step_listener(bar.on_step)
            if on_step is not None:
                session.add_step_listener(on_step)
            frame = None
            try:
                if around is None:
                    session.run(sweep_loop, depths, n_steps, seed)
                else:
                    frame, collected[config.label] = around.run(session, sweep_loop, depths, n_steps, seed)
            except EngineCrashedError as exc:
                bar.write(f"gpuscope sweep: configuration {config.label!r}: {exc}")
            finally:
                session.close()
            tables = {}
            if frame is not None:
                in_step = join_to_steps(frame, session.steps)
                collected[config.label]["outside_steps"] = int(in_step.isna().sum())
                tables[around.table] = frame.assign(in_step=in_step, config=config.label)
                if progress:
                    bar.write(f"gpuscope sweep: {config.label}: {around.summary(frame, collected[config.label])}")
            pieces.append(session.trace(tables=tables, workload=workload))
    finally:
        bar.close()
    if not pieces:
        raise EngineCrashedError("every configuration's engine died while loading: " +
                                 "; ".join(f"{f['config']}: {f['error']}" for f in failed))
    meta = {"source": "sweep", "workload": workload, "failed": failed}
    if around is not None:
        meta[around.table_meta] = collected
    trace = combine(pieces, meta)
    if out is not None:
        save_trace(trace, out)
    return trace


def _check_sweep(configs: list[SplitConfig], depths: Sequence[int], n_steps: int,
                 n_ctx_train: int | None) -> tuple[list[SplitConfig], list[int]]:
    """Validate the sweep before anything loads; a configuration without n_ctx gets the context it needs."""
    if not configs:
        raise SplitConfigError("a sweep needs at least one configuration")
    depths = sorted({int(d) for d in depths})
    if not depths or depths[0] < 0:
        raise SplitConfigError(f"depths must be non-negative token counts, got {depths}")
    if n_steps < 1:
        raise SplitConfigError(f"n_steps must be at least 1, got {n_steps}")
    needed = depths[-1] + n_steps
    if n_ctx_train and needed > n_ctx_train:
        raise SplitConfigError(f"depth {depths[-1]} plus {n_steps} steps needs {needed} tokens of context, more "
                               f"than the model's training context ({n_ctx_train})")
    sized = []
    for config in configs:
        if config.context_size(n_ctx_train) < needed:
            if config.n_ctx is not None:
                raise SplitConfigError(f"configuration {config.label!r} has n_ctx={config.n_ctx}, but depth "
                                       f"{depths[-1]} plus {n_steps} steps needs {needed}: raise n_ctx or lower "
                                       "the depths")
            config = config.replace(n_ctx=needed)
        sized.append(config)
    labels = [c.label for c in sized]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise SplitConfigError(f"configurations must have distinct labels, {', '.join(map(repr, repeated))} "
                               "repeats: give them a name=")
    return sized, depths


class SweepProgress:
    """A progress bar over the decode steps of a sweep (fill steps show as a status): configuration, depth, step."""

    def __init__(self, total: int, enabled: bool = True):
        self._bar = None
        if enabled:
            self._bar = tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True)
        self._label = ""

    def start_config(self, label: str) -> None:
        self._label = label
        if self._bar is not None:
            self._bar.set_description(f"{label}: loading")

    def on_step(self, row: dict) -> None:
        if self._bar is None:
            return
        depth = row.get("depth", "?")
        if row["phase"] == "fill":
            self._bar.set_description(f"{self._label}: filling to {depth} ({row['pos_after']})")
            return
        self._bar.set_description(f"{self._label}: depth {depth}")
        self._bar.set_postfix(ms=f"{row['wall_ns'] / 1e6:.2f}", refresh=False)
        self._bar.update(1)

    def write(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            say(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
