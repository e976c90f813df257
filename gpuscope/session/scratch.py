"""The files sessions make beside themselves, and the removal of those that dead processes left behind.

A session's rings (in the ring folder) and its RPC servers' log folders (in the temp folder) carry in their names
the pid of the process that removes them when the session closes. A process killed with SIGKILL removes nothing,
so every session start removes the files whose process is gone.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

from gpuscope.trace.ringtap import ring_dir

_RING = re.compile(r"gpuscope-(?:session|worker|rpc\d+)-(?P<pid>\d+)-[0-9a-f]+\.ring")
_RPC_FOLDER = re.compile(r"gpuscope-rpc-(?P<pid>\d+)-.+")


def new_ring_path(kind: str, owner_pid: int | None = None) -> Path:
    """A fresh ring path for `kind` ('session', 'worker', 'rpc0', ...), removed by `owner_pid` (default: this
    process)."""
    return ring_dir() / f"gpuscope-{kind}-{owner_pid or os.getpid()}-{uuid.uuid4().hex[:12]}.ring"


def new_rpc_folder() -> Path:
    """A fresh folder for this process's RPC server logs."""
    return Path(tempfile.mkdtemp(prefix=f"gpuscope-rpc-{os.getpid()}-"))


def remove_leftovers() -> None:
    """Remove the rings and RPC folders of processes that are gone."""
    for folder, pattern in ((ring_dir(), _RING), (Path(tempfile.gettempdir()), _RPC_FOLDER)):
        for path in folder.glob("gpuscope-*"):
            found = pattern.fullmatch(path.name)
            if found is None or process_alive(int(found["pid"])) or not _owned(path):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _owned(path: Path) -> bool:
    try:
        return path.lstat().st_uid == os.getuid()
    except FileNotFoundError:  # removed meanwhile by another session's start
        return False
