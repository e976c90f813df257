"""The traces a query reads: the paths given, each checked as `load_trace` checks it but without reading a table's
data, each named for the `trace` column, and each one's meta as a row of the `traces` table (docs/query.md)."""
from __future__ import annotations

import glob
import json
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from gpuscope.errors import QueryError, TraceError
from gpuscope.trace.model import read_meta, table_files

TraceArgument = str | os.PathLike | Iterable[str | os.PathLike]


class SkippedTraceWarning(UserWarning):
    """A trace left out of a query (skip_bad=True) because it cannot be read."""


@dataclass(frozen=True)
class QueriedTrace:
    name: str                 # the `trace` column: the folder's name less `.trace`, parent folders added if needed
    path: Path                # resolved, as the `path` column shows it
    meta: dict
    tables: dict[str, Path]   # kind -> its Parquet file


def trace_paths(traces: TraceArgument) -> list[Path]:
    """The trace folders asked for: one path, a glob pattern (`datasets/*/*.trace`) or a list of either."""
    given = [traces] if isinstance(traces, (str, os.PathLike)) else list(traces)
    paths = []
    for item in given:
        text = os.fspath(item)
        if glob.has_magic(text) and not Path(text).exists():
            matches = sorted(glob.glob(text))
            if not matches:
                raise QueryError(f"{text}: matches no trace")
            paths += [Path(match) for match in matches]
        else:
            paths.append(Path(text))
    if not paths:
        raise QueryError("no traces to query: give at least one trace folder")
    seen: dict[Path, Path] = {}
    for path in paths:
        resolved = path.resolve()
        if resolved in seen:  # its rows would count twice in every aggregate
            raise QueryError(f"{path}: given twice (also as {seen[resolved]})")
        seen[resolved] = path
    return paths


def open_traces(paths: list[Path], *, skip_bad: bool = False) -> list[QueriedTrace]:
    """Each trace's meta and table footers, checked; an unreadable trace is a TraceError naming it, or with skip_bad
    a SkippedTraceWarning and the trace left out."""
    opened = []
    for path in paths:
        try:
            opened.append((path.resolve(), read_meta(path), {file.stem: file.resolve() for file in table_files(path)}))
        except TraceError as exc:
            if not skip_bad:
                raise TraceError(f"{exc} (--skip-bad, or skip_bad=True, leaves unreadable traces out)") from None
            warnings.warn(f"skipped {exc}", SkippedTraceWarning, stacklevel=3)
    if not opened:
        raise QueryError(f"none of the {len(paths)} traces given can be read")
    names = trace_names([path for path, _, _ in opened])
    return [QueriedTrace(name, path, meta, tables) for name, (path, meta, tables) in zip(names, opened)]


def trace_names(paths: list[Path]) -> list[str]:
    """Short distinct names: `clean-decode` for `.../clean-decode.trace`; where two folders have the same name, their
    parent folders are put in front until they differ (`cpu/a`, `gpu/a`)."""
    parts = [(*path.parts[:-1], path.name.removesuffix(".trace")) for path in paths]
    depth = [1] * len(paths)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clashing = {name for name in names if names.count(name) > 1}
        if not clashing:
            return names
        depth = [d + 1 if name in clashing else d for name, d in zip(names, depth)]


# -- the `traces` table ------------------------------------------------------------------------------------------

def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def _number(value) -> float | None:
    return float(value) if type(value) in (int, float) else None


def _integer(value) -> int | None:
    return value if type(value) is int else None


def _section(meta: dict, key: str) -> dict:
    return meta.get(key) if isinstance(meta.get(key), dict) else {}


def _model_path(meta: dict) -> str | None:
    model = meta.get("model")
    return _text(model) or _text(_section(meta, "model").get("path")) or _text(_section(meta, "model_bytes").get("path"))


def _devices(meta: dict) -> list[str]:
    """The device names of the ring that recorded the trace (a list, or an object of ring index -> name)."""
    devices = _section(meta, "ring").get("devices")
    names = devices.values() if isinstance(devices, dict) else devices if isinstance(devices, list) else []
    return [name for name in names if isinstance(name, str)]


def _started_ms(meta: dict) -> int | None:
    started = _number(meta.get("started_realtime_s"))
    return None if started is None else round(started * 1000)


# Column, type and how it is read from the trace; meta.json keys are those of docs/trace-format.md, so every type
# was checked when the trace was opened, and a key a trace lacks is null.
TRACE_COLUMNS = {
    "trace": (pa.string(), lambda trace: trace.name),
    "path": (pa.string(), lambda trace: str(trace.path)),
    "source": (pa.string(), lambda trace: _text(trace.meta.get("source"))),
    "started": (pa.timestamp("ms", tz="UTC"), lambda trace: _started_ms(trace.meta)),
    "duration_s": (pa.float64(), lambda trace: _number(trace.meta.get("duration_s"))),
    "build": (pa.string(), lambda trace: _text(_section(trace.meta, "engine").get("name"))),
    "backend": (pa.string(), lambda trace: _text(_section(trace.meta, "engine").get("backend"))),
    "hook_series": (pa.string(), lambda trace: _text(_section(trace.meta, "engine").get("hook_series_sha256"))),
    "patches": (pa.list_(pa.string()), lambda trace: [
        patch["name"] for patch in _section(trace.meta, "engine").get("patches") or [] if _text(patch.get("name"))]),
    "model": (pa.string(), lambda trace: _model_path(trace.meta)),
    "architecture": (pa.string(), lambda trace: _text(_section(trace.meta, "model_bytes").get("architecture"))),
    "n_layer": (pa.int64(), lambda trace: _integer(_section(trace.meta, "model_bytes").get("n_layer"))),
    "configs": (pa.list_(pa.string()), lambda trace: [
        config["label"] for config in trace.meta.get("configs") or [] if _text(config.get("label"))]),
    "workload": (pa.string(), lambda trace: _text(_section(trace.meta, "workload").get("name"))),
    "command": (pa.list_(pa.string()), lambda trace: trace.meta.get("command") or []),
    "devices": (pa.list_(pa.string()), lambda trace: _devices(trace.meta)),
    "gpu": (pa.string(), lambda trace: _text(_section(trace.meta, "machine").get("gpu"))),
    "cpu": (pa.string(), lambda trace: _text(_section(trace.meta, "machine").get("cpu"))),
    "exit": (pa.string(), lambda trace: _text(_section(trace.meta, "exit").get("how"))),
    "crashed": (pa.bool_(), lambda trace: trace.meta.get("crashed") if isinstance(trace.meta.get("crashed"), bool)
                else None),
    "events_written": (pa.int64(), lambda trace: _integer(_section(trace.meta, "ring").get("written"))),
    "events_lost": (pa.int64(), lambda trace: _integer(_section(trace.meta, "ring").get("lost"))),
    "tables": (pa.list_(pa.string()), lambda trace: sorted(trace.tables)),
    "meta": (pa.string(), lambda trace: json.dumps(trace.meta)),  # JSON: `meta ->> '$.engine.key'`
}


def trace_rows(traces: list[QueriedTrace]) -> pa.Table:
    """The `traces` table: one row per trace."""
    return pa.table({column: pa.array([read(trace) for trace in traces], type)
                     for column, (type, read) in TRACE_COLUMNS.items()})
