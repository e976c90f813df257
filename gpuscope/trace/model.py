"""The trace: what analyses read. A folder of Parquet tables (one per event kind) plus `meta.json`.

Format version 1 (docs/trace-format.md describes it for other tools):

    TRACE/
      meta.json            {"format": "gpuscope-trace", "format_version": 1, ...}
      tables/<kind>.parquet one table per event kind present (mark, fa_plan, sync, buffer, decode_begin, ...)

Every table has the columns `seq` (global ticket order across kinds), `ts_ns` (CLOCK_MONOTONIC of the writer),
`tid`, `device`, then the payload fields of gpuscope_events.h, with strings resolved and enums as names.
`meta["ring"]` keeps the ring header's paired start timestamps, so `ts_ns` can be put on wall-clock time.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from gpuscope.errors import TraceError
from gpuscope.markup import notebook, pairs, table
from gpuscope.ring.schema import load_schema
from gpuscope.trace.format import META_MAX_BYTES, check_table, parse_meta, read_table

FORMAT = "gpuscope-trace"
FORMAT_VERSION = 1


@dataclass
class Trace:
    meta: dict
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    path: Path | None = None

    def table(self, kind: str) -> pd.DataFrame:
        """The events of `kind`; an empty frame with the kind's columns when the run produced none."""
        if kind in self.tables:
            return self.tables[kind]
        schema = load_schema()
        if kind not in schema.kinds.values():
            raise KeyError(f"unknown event kind {kind!r}; known: {sorted(schema.kinds.values())}")
        columns = ["seq", "ts_ns", "tid", "device"] + [f.name for f in schema.payload(kind).fields]
        return pd.DataFrame({name: pd.Series(dtype=object) for name in columns})

    def _repr_html_(self) -> str:
        """The trace in a notebook: where it came from, what ran, and its events per kind."""
        meta, ring = self.meta, self.meta.get("ring") or {}
        model = meta.get("model")
        facts = [("trace", self.path or "in memory"), ("made by", meta.get("source")),
                 ("engine", (meta.get("engine") or {}).get("name")),
                 ("model", model.get("name") or model.get("path") if isinstance(model, dict) else model),
                 ("configurations", [c.get("label") for c in meta.get("configs") or []] or None),
                 ("devices", ring.get("devices") or None), ("events written", ring.get("written")),
                 ("events lost", ring.get("lost")), ("crashed", meta.get("crashed"))]
        kinds = sorted(self.tables)
        counts = pd.DataFrame({"kind": kinds, "events": [len(self.tables[kind]) for kind in kinds]})
        name = Path(str(self.path)).name if self.path else "in memory"
        return notebook(f"gpuscope trace {name}", pairs([(k, v) for k, v in facts if v is not None])
                        + "<h3>Events per kind</h3>" + table(counts))

    def __repr__(self) -> str:
        counts = ", ".join(f"{kind}={len(frame)}" for kind, frame in sorted(self.tables.items()))
        return f"Trace({self.path or 'in memory'}: {counts or 'no events'})"


def save_trace(trace: Trace, path: str | os.PathLike) -> Path:
    """Write atomically: a half-written trace never appears at `path`."""
    path = Path(path)
    if path.exists() and not (path / "meta.json").is_file():
        raise TraceError(f"{path} exists and is not a gpuscope trace: refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        (staging / "tables").mkdir()
        for kind, frame in trace.tables.items():
            frame.to_parquet(staging / "tables" / f"{kind}.parquet", index=False)
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **trace.meta}
        (staging / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    trace.path = path
    return path


def load_trace(path: str | os.PathLike) -> Trace:
    """Open a trace written by `gpuscope record`, a sweep, or `save_trace`; a damaged one is a TraceError naming
    the file and the damage (gpuscope.trace.format checks it against docs/trace-format.md)."""
    path = Path(path)
    meta = read_meta(path)
    files = table_files(path)
    tables = {file.stem: read_table(file, file.stem) for file in files}
    return Trace(meta=meta, tables=tables, path=path)


def read_meta(path: Path) -> dict:
    """A trace folder's meta.json, checked against the format; a TraceError for anything else."""
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise TraceError(f"{path}: not a gpuscope trace (no meta.json)")
    try:
        with open(meta_path, "rb") as file:
            data = file.read(META_MAX_BYTES + 1)
    except OSError as exc:
        raise TraceError(f"{meta_path}: cannot be read ({exc.strerror})") from None
    meta = parse_meta(data, meta_path)
    if meta.get("format") != FORMAT:
        raise TraceError(f"{path}: meta.json is not a gpuscope trace's")
    if meta.get("format_version") != FORMAT_VERSION:
        raise TraceError(f"{path}: trace format version {meta.get('format_version')}, this gpuscope reads "
                         f"{FORMAT_VERSION}")
    return meta


def table_files(path: Path) -> list[Path]:
    """A trace folder's table files, one per kind, each footer checked against the format (no data is read)."""
    try:
        files = sorted((path / "tables").glob("*.parquet"))
    except OSError as exc:
        raise TraceError(f"{path / 'tables'}: cannot be listed ({exc.strerror})") from None
    for file in files:
        check_table(file, file.stem)
    return files
