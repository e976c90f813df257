"""What else ran on the machine while a session measured: the cores this process may run on, how busy they were,
how much of that was this process, the load average, and the other processes that took CPU time meanwhile. A
session takes a snapshot when it opens and writes the difference into its trace's meta (`meta["load"]`), so the
doctor can say that a noisy run was a busy machine (gpuscope.doctor.rules, `measurement.noisy`).

Read from /proc (Linux); elsewhere nothing is recorded."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
OTHERS_LISTED = 5  # the busiest other processes named in the meta
OTHERS_MIN_CPU_S = 0.05  # a process that took less than this in the window is not worth naming
# /proc/stat's per-core columns that are work (user, nice, system, irq, softirq, steal); idle and iowait are not
_BUSY_COLUMNS = (0, 1, 2, 5, 6, 7)


@dataclass(frozen=True)
class CpuSnapshot:
    at_s: float                             # time.monotonic()
    cpus: tuple[int, ...]                   # the cores this process (the engine's threads) may run on
    busy_s: float                           # their busy time since boot
    own_s: float                            # this process's CPU time, all its threads, and its reaped children's
    processes: dict[int, tuple[str, float]]  # every other process: pid -> (name, its CPU time)


def snapshot() -> CpuSnapshot | None:
    """The machine's counters now; None without /proc."""
    try:
        cpus = tuple(sorted(os.sched_getaffinity(0)))
        busy = _busy_seconds(set(cpus))
    except (OSError, AttributeError, ValueError):
        return None
    times = os.times()
    return CpuSnapshot(time.monotonic(), cpus, busy, time.process_time() + times.children_user
                       + times.children_system, _processes())


def load_since(start: CpuSnapshot | None, helpers: Iterable[int] = ()) -> dict | None:
    """What ran between `start` and now: window_s, cpus (the engine's cores), loadavg (1, 5 and 15 minutes, at
    the end), busy_share (of those cores' time), own_share (this process's part, with its `helpers`: the
    session's RPC servers, the recorded program while it runs; children it has reaped count as its own),
    others_share (the rest: other processes on those cores), others (the busiest other
    processes: pid, name, cpu_s). None without a start."""
    end = snapshot()
    if start is None or end is None or end.at_s <= start.at_s:
        return None
    room = (end.at_s - start.at_s) * len(start.cpus)
    # the cores of the start: those the engine's threads were made on
    busy, own = _busy_seconds(set(start.cpus)) - start.busy_s, end.own_s - start.own_s
    # a process that started within the window took all its CPU time in it
    took = {pid: (name, cpu_s - start.processes.get(pid, (name, 0.0))[1])
            for pid, (name, cpu_s) in end.processes.items()}
    helpers = set(helpers)
    own += sum(cpu_s for pid, (_, cpu_s) in took.items() if pid in helpers)
    others = sorted(((pid, name, cpu_s) for pid, (name, cpu_s) in took.items() if pid not in helpers),
                    key=lambda p: -p[2])
    try:
        loadavg = [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        loadavg = None
    return {"window_s": round(end.at_s - start.at_s, 3), "cpus": list(start.cpus), "loadavg": loadavg,
            "busy_share": round(min(busy / room, 1.0), 4), "own_share": round(min(own / room, 1.0), 4),
            "others_share": round(min(max(busy - own, 0.0) / room, 1.0), 4),
            "others": [{"pid": pid, "name": name, "cpu_s": round(cpu_s, 3)}
                       for pid, name, cpu_s in others[:OTHERS_LISTED] if cpu_s >= OTHERS_MIN_CPU_S]}


def _busy_seconds(cpus: set[int]) -> float:
    ticks = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks += sum(int(fields[i]) for i in _BUSY_COLUMNS if i < len(fields))
    return ticks * TICK_S


def _stat(pid: str) -> tuple[str, float] | None:
    """(name, CPU time) of a process; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
    return name, (int(rest[11]) + int(rest[12])) * TICK_S  # utime, stime


def _processes() -> dict[int, tuple[str, float]]:
    mine = os.getpid()
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != mine and (stat := _stat(entry)) is not None:
            found[int(entry)] = stat
    return found

