"""Traces that outlive their recorder.

`gpuscope record` rewrites its trace every few seconds while the program runs, each time swapped in whole with one
atomic rename (`publish`), so whenever the recorder dies its trace folder holds a complete trace of what had been
read. What the ring held beyond that is not lost either: beside its ring the recorder keeps a claim (which recorder,
which trace), and the ring of a recorder that is gone is merged into its trace by the next `gpuscope record`
(`recover_abandoned`), or on demand with `gpuscope record --from-ring RING --out TRACE` (`recover_ring`).
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pandas as pd

from gpuscope.errors import GpuscopeError
from gpuscope.log import say
from gpuscope.ring.reader import RingReader
from gpuscope.trace.model import Trace, load_trace, save_trace
from gpuscope.trace.ringtap import RingTap
from gpuscope.version import __version__

_LIBC = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_CLAIM_SUFFIX = ".claim"
# `recording.state` in a trace's meta: still being written (or its recorder died), finished, or merged from a ring
IN_PROGRESS, COMPLETE, RECOVERED = "in progress", "complete", "recovered"


class TraceOutputError(GpuscopeError):
    """A trace cannot be written where it was asked for."""


def check_trace_path(out: str | os.PathLike) -> Path:
    """`out` as a place a trace can be written, checked before anything runs: nothing yet or a trace (which is
    replaced), in a folder that exists or can be made."""
    out = Path(out).absolute()
    if (out.exists() or out.is_symlink()) and not (out.is_dir() and (out / "meta.json").is_file()):
        raise TraceOutputError(f"{out} exists and is not a gpuscope trace: refusing to overwrite it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TraceOutputError(f"cannot make the folder {out.parent} for the trace: {exc.strerror}") from None
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise TraceOutputError(f"cannot write the trace into {out.parent}: permission denied")
    return out


def publish(trace: Trace, out: Path) -> Path:
    """Write `trace` at `out` whole or not at all: built in a staging folder beside it, then swapped in with one
    rename (RENAME_EXCHANGE), so `out` holds a complete trace at every moment, even if this process is killed."""
    _remove_dead_staging(out)
    staging = out.parent / f".{out.name}.{os.getpid()}.staging"
    staging.mkdir(exist_ok=True)
    try:
        fresh = save_trace(trace, staging / uuid.uuid4().hex)
        if not _exchange(fresh, out):  # no trace there yet (or a filesystem that cannot swap folders)
            if out.exists():
                out.rename(staging / "previous")
            fresh.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # after a swap it holds the previous trace
    trace.path = out
    return out


def _exchange(fresh: Path, out: Path) -> bool:
    """Swap two folders atomically; False when `out` does not exist or the filesystem cannot."""
    renameat2 = getattr(_LIBC, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(fresh), _AT_FDCWD, os.fsencode(out), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOENT, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(out))


def _remove_dead_staging(out: Path) -> None:
    """Staging folders of publishers killed halfway (their pid is in the name)."""
    head, tail = f".{out.name}.", ".staging"
    for name in os.listdir(out.parent):
        pid = name[len(head):-len(tail)]
        if name.startswith(head) and name.endswith(tail) and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(out.parent / name, ignore_errors=True)


# -- claims: which recorder drains a ring into which trace -----------------------------------------------------------

def claim(ring: Path, out: Path, command: list[str]) -> Path:
    """Note beside `ring` that this process records it into `out`."""
    path = ring.with_suffix(_CLAIM_SUFFIX)
    text = json.dumps({"recorder_pid": os.getpid(), "recorder_start": process_start(os.getpid()), "out": str(out),
                       "command": command})
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    return path


def release(ring: Path, *, keep_ring: bool) -> None:
    """The ring's trace is written: drop the claim and, unless asked to keep it, the ring."""
    ring.with_suffix(_CLAIM_SUFFIX).unlink(missing_ok=True)
    if not keep_ring:
        ring.unlink(missing_ok=True)


def _read_claim(path: Path) -> dict | None:
    try:
        info = json.loads(path.read_text())
        return info if isinstance(info, dict) and isinstance(info.get("recorder_pid"), int) else None
    except (OSError, ValueError):
        return None


def process_start(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot; a reused pid has another), None unless it runs (a zombie does
    not: it will never write again)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


def process_alive(pid: int) -> bool:
    return process_start(pid) is not None


def recover_abandoned(ring_folder: Path, prefix: str, *, quiet: bool = False) -> list[Path]:
    """Finish the traces of recorders that died (killed with SIGKILL, out of memory): merge what their rings still
    hold into them, then remove the rings. Returns the traces finished."""
    finished: list[Path] = []
    for claim_path in sorted(ring_folder.glob(f"{prefix}*{_CLAIM_SUFFIX}")):
        info = _read_claim(claim_path)
        if info is None or _recorder_running(info):
            continue  # not a claim we wrote, or its recorder still runs
        note = _finish_abandoned(claim_path.with_suffix(".ring"), Path(str(info.get("out"))), finished)
        if note and not quiet:
            say(f"gpuscope record: {note}")
    return finished


def _finish_abandoned(ring: Path, out: Path, finished: list[Path]) -> str | None:
    """Merge the ring of a dead recorder into its trace and remove it; what was done, in words."""
    if not ring.exists():  # the recorder died before the program emitted anything
        release(ring, keep_ring=False)
        return None
    try:
        if _partial_trace(out, ring) is None:
            note = f"removed {ring}, the ring of a killed recorder: its trace {out} is gone or was replaced"
        else:
            with RingReader(ring) as reader:
                if reader.status.state == "alive":
                    return None  # a process the recorder started still writes it: next time
            trace, added = recover_ring(ring, out)
            finished.append(trace.path)
            note = f"finished {out}, the trace of a killed recorder, with {added} events from its ring"
    except OSError as exc:  # the trace cannot be written now: next time
        return f"left {ring}, the ring of a killed recorder, for later: cannot write {out} ({exc})"
    except GpuscopeError as exc:
        note = f"removed {ring}, the ring of a killed recorder, unreadable: {exc}"
    release(ring, keep_ring=False)
    return note


def _recorder_running(info: dict) -> bool:
    started = process_start(info["recorder_pid"])
    return started is not None and started == info.get("recorder_start")


# -- recovery ----------------------------------------------------------------------------------------------------

def recover_ring(ring: str | os.PathLike, out: str | os.PathLike, *, keep_ring: bool = False) -> tuple[Trace, int]:
    """The trace of what `ring` holds, written at `out`: (trace, events taken from the ring).

    When `out` is the trace a recorder was writing from this ring when it died, the ring's events after those
    already in it are added (the loss in between counted exactly); otherwise the trace is the ring's content alone.
    The ring is removed afterwards unless `keep_ring` or its writer still runs."""
    ring, out = Path(ring), check_trace_path(out)
    partial = _partial_trace(out, ring)
    reader = RingReader(ring)
    before = partial.meta["ring"] if partial is not None else {}
    if partial is not None and "position" in before:  # what the recorder already took (read or counted lost)
        reader.skip_to(before["position"])
    tables, ring_meta = RingTap(ring, reader).finish()
    added = int(ring_meta["read"])
    accounted = int(before.get("read", 0)) + int(before.get("lost", 0))  # the recorder's share: up to its position
    ring_meta["written"] += accounted
    ring_meta["read"] += int(before.get("read", 0))
    ring_meta["lost"] += int(before.get("lost", 0))
    if partial is not None:
        meta, tables = dict(partial.meta), _merge(partial.tables, tables)
    else:
        info = _read_claim(ring.with_suffix(_CLAIM_SUFFIX)) or {}
        meta = {"gpuscope_version": __version__, "source": "record", "command": info.get("command"), "exit": None}
    meta["ring"] = ring_meta
    meta["recording"] = {**meta.get("recording", {}), "state": RECOVERED, "recovered_realtime_s": time.time(),
                         "recovered_from": str(ring)}
    trace = Trace(meta=meta, tables=tables)
    publish(trace, out)
    info = _read_claim(ring.with_suffix(_CLAIM_SUFFIX))
    if ring_meta["state"] != "alive" and not (info is not None and _recorder_running(info)):
        release(ring, keep_ring=keep_ring)
    return trace, added


def _partial_trace(out: Path, ring: Path) -> Trace | None:
    """The trace at `out` when it is the one a recorder was writing from `ring`, else None."""
    try:
        trace = load_trace(out)
    except GpuscopeError:
        return None
    meta_ring = trace.meta.get("ring")
    if (trace.meta.get("recording") or {}).get("state") != IN_PROGRESS or not isinstance(meta_ring, dict):
        return None
    return trace if Path(str(meta_ring.get("path"))).absolute() == ring.absolute() else None


def _merge(old: dict[str, pd.DataFrame], new: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Tables of the same kinds appended (the new events all come after the old)."""
    tables = dict(old)
    for kind, frame in new.items():
        if kind not in tables:
            tables[kind] = frame
            continue
        merged = pd.concat([tables[kind], frame], ignore_index=True)
        for column in frame.columns:  # categories differ between the two: keep the column categorical
            if isinstance(frame[column].dtype, pd.CategoricalDtype):
                merged[column] = merged[column].astype("category")
        tables[kind] = merged
    return tables
