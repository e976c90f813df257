"""Child processes of the engine's side (RPC servers, session workers, recorded programs): how one ended, and
dying with the thread that started it."""
from __future__ import annotations

import ctypes
import os
import signal

from gpuscope.trace.ringtap import signal_name

_PR_SET_PDEATHSIG = 1


_LIBC = ctypes.CDLL(None, use_errno=True)  # resolved before any fork: the child only calls it


def how_it_ended(returncode: int) -> dict:
    if returncode < 0:
        return {"returncode": returncode, "signal": -returncode, "how": f"killed by {signal_name(-returncode)}"}
    return {"returncode": returncode, "signal": 0, "how": f"exited with status {returncode}"}


def die_with_parent() -> None:
    """In a child between fork and exec: ask the kernel to kill it when the thread that forked it ends."""
    parent = os.getppid()
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
