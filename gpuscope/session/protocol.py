"""What every session offers, wherever its engine runs, and the one way to open one.

`Session` runs the engine in this process; `IsolatedSession` runs the same API with the engine in a worker process
(a crash ends only the worker; another engine build can run beside this process's). Runs, collectors and the
dashboard take any `SessionLike`; `in_process` says whether its steps happen on this process's threads.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import pandas as pd

from gpuscope.session.config import SplitConfig
from gpuscope.session.session import Session
from gpuscope.session.worker import IsolatedSession
from gpuscope.trace.model import Trace


@runtime_checkable
class SessionLike(Protocol):
    config: SplitConfig
    in_process: bool

    @property
    def label(self) -> str: ...

    @property
    def steps(self) -> pd.DataFrame: ...

    def run(self, function: Callable, *args, **kwargs): ...

    def set_tags(self, **tags) -> None: ...

    def tagged(self, **tags): ...

    def add_step_listener(self, listener: Callable[[dict], None]) -> None: ...

    def processes(self) -> dict[str, dict]: ...

    def meta(self) -> dict: ...

    def trace(self, *, tables: dict[str, pd.DataFrame] | None = None, **meta) -> Trace: ...

    def save(self, path: str | os.PathLike, **meta) -> Path: ...

    def close(self) -> None: ...


def open_session(model: str | os.PathLike | None = None, config: SplitConfig | None = None, *,
                 isolate: bool = False, **options) -> SessionLike:
    """A session of `model` under `config`: in this process, or (isolate=True) in a worker process. Options are
    Session's (engine, draft_model, ring_capacity, rpc_threads, verbose; ring_path only in this process)."""
    if isolate:
        return IsolatedSession(model, config, **options)
    return Session(model, config, **options)
