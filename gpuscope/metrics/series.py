"""Every series `gpuscope metrics` exports, defined once: name, help, labels and buckets, and the caps that bound
each label's values (docs/metrics.md lists them; tests/test_metrics.py checks that the two agree).

Every series of a ring carries `RING_LABELS`: the ring (its file name), the model (the file a llama.cpp program's
command line names), the configuration (the flags that change how it runs) and the engine build. A label takes at
most its cap of distinct values over the exporter's life; later values read `other`, so a fleet of servers or a
stream of shapes cannot grow Prometheus's series without bound.
"""
from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# a counter's `_created` sample doubles its series and no dashboard reads it
disable_created_metrics()

PREFIX = "gpuscope_"
OTHER = "other"  # the value a label takes past its cap
UNKNOWN = "unknown"
RING_LABELS = ("ring", "model", "config", "build")
# distinct values per label; enum labels (owner, reason, kernel, state, ...) are small sets the hooks define and
# share the general cap, which only an unknown newer writer's values would reach
CAPS = {"ring": 32, "model": 16, "config": 16, "build": 8, "device": 16, "shape": 32, "op": 32}
GENERAL_CAP = 24
# step times: a CPU decode of a small model takes a few ms, a long prefill or a stalled machine seconds
STEP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
TOKEN_BUCKETS = tuple(float(1 << i) for i in range(14))  # 1 .. 8192 tokens per step
POLL_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
WRITER_STATES = ("waiting", "alive", "exited", "crashed", "closed", "gone", "error")

# name (without the prefix), kind, help, labels beyond the ring's (None: no ring labels), buckets
_DEFINITIONS = [
    ("step_seconds", Histogram, "Wall time of a decode step (llama_decode entry to the step's synchronized end), "
     "by phase: decode (one token per sequence) or prefill", ("phase",), STEP_BUCKETS),
    ("step_tokens", Histogram, "Tokens in one llama_decode call, by phase", ("phase",), TOKEN_BUCKETS),
    ("steps", Counter, "Decode steps finished, by phase and outcome (ok, failed: llama_decode returned an error, "
     "unfinished: the writer died inside it)", ("phase", "status"), None),
    ("context_cells", Gauge, "KV cells in use after the last step (kv_used + its tokens)", (), None),
    ("replans", Counter, "Graph allocator re-plans (reallocations decided), by reason", ("reason",), None),
    ("replanned_steps", Counter, "Steps in which the graph allocator re-planned or the scheduler re-reserved", (),
     None),
    ("reserves", Counter, "Scheduler re-reserves of its graph allocator, by trigger", ("trigger",), None),
    ("reserve_seconds", Counter, "Time spent in scheduler re-reserves (the sync of all backends before it plus the "
     "reserve), by trigger", ("trigger",), None),
    ("fa_plans", Counter, "FlashAttention kernel selections, by device and kernel (the hooks count each distinct "
     "selection once)", ("device", "kernel"), None),
    ("fa_no_kernel", Counter, "FlashAttention selections that found no kernel, by device, shape (head sizes and K/V "
     "types), batch (tokens, bucketed to a power of two) and reason", ("device", "shape", "batch", "reason"), None),
    ("ops_off_device", Counter, "Ops the scheduler placed on another backend than their layer's device",
     ("op", "backend", "layer_backend"), None),
    ("syncs", Counter, "Backend synchronizations and event waits, by backend and reason", ("backend", "reason"), None),
    ("sync_seconds", Counter, "Time spent in synchronizations, by backend and reason", ("backend", "reason"), None),
    ("copies", Counter, "Cross-device tensor copies, by device pair and mode", ("src_device", "dst_device", "mode"),
     None),
    ("copy_bytes", Counter, "Bytes copied between devices, by device pair", ("src_device", "dst_device"), None),
    ("copy_seconds", Counter, "Time spent in cross-device copies, by device pair", ("src_device", "dst_device"), None),
    ("memory_bytes", Gauge, "Bytes the engine's backend buffers hold now, by location (device, or CPU for host "
     "buffers) and owner (weights, kv, compute, output; ' (mapped file)' for buffers over a mapped model file)",
     ("device", "owner"), None),
    ("ubatches", Counter, "Ubatch graphs computed, by whether the previous graph was reused", ("graph_reused",), None),
    ("ring_events", Counter, "Ring records read", (), None),
    ("ring_lost_events", Counter, "Ring records lost (overwritten before they were read, or abandoned by a dead "
     "writer)", (), None),
    ("ring_dropped", Counter, "What the writer could not record: names it could not intern (strings) and records "
     "a lapped producer gave up (records)", ("what",), None),
    ("writer_state", Gauge, "The ring writer's state: 1 for the current one (waiting: no ring at the path yet; "
     "alive; exited: died without closing; crashed; closed; gone: the ring was removed; error: not a readable ring)",
     ("state",), None),
    ("captures", Counter, "Traces captured on demand, by the condition that fired", ("reason",), None),
    ("captures_skipped", Counter, "Conditions that fired while their capture was held back by the rate cap",
     ("reason",), None),
    ("exporter_poll_seconds", Histogram, "The exporter's own time to read and convert one poll of every ring", None,
     POLL_BUCKETS),
    ("exporter_rings", Gauge, "Rings the exporter follows", None, None),
]


class Interner:
    """Label values as first seen, at most `cap` distinct; later ones read OTHER. Shared by the rings."""

    def __init__(self, cap: int):
        self.cap = cap
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value) -> str:
        value = UNKNOWN if value is None or value != value else str(value)  # None or NaN: a missing name
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) < self.cap:
                self._seen.add(value)
                return value
        return OTHER


class Series:
    """The exporter's series in their own registry (`registry`), and one interner per label."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._metrics = {}
        for name, kind, help_text, labels, buckets in _DEFINITIONS:
            names = () if labels is None else RING_LABELS + labels
            options = {"buckets": buckets} if buckets else {}
            self._metrics[name] = kind(PREFIX + name, help_text, names, registry=self.registry, **options)
        self._interners: dict[str, Interner] = {}

    def __getitem__(self, name: str):
        return self._metrics[name]

    def label(self, label: str, value) -> str:
        """`value` as label `label` may take it (interned under the label's cap)."""
        interner = self._interners.get(label)
        if interner is None:
            interner = self._interners.setdefault(label, Interner(CAPS.get(label, GENERAL_CAP)))
        return interner(value)


def exported_names() -> set[str]:
    """Every sample name the exporter can expose (a histogram's _bucket, _sum and _count, a counter's _total)."""
    names = set()
    for name, kind, *_ in _DEFINITIONS:
        full = PREFIX + name
        if kind is Histogram:
            names |= {full + "_bucket", full + "_sum", full + "_count"}
        elif kind is Counter:
            names.add(full + "_total")
        else:
            names.add(full)
    return names


def definitions() -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(name as exposed, type, help, labels) of every series, for the docs: a counter's name ends in _total, a
    histogram's is the stem of its _bucket, _sum and _count."""
    return [(PREFIX + name + ("_total" if kind is Counter else ""), kind.__name__.lower(), help_text,
             () if labels is None else RING_LABELS + labels) for name, kind, help_text, labels, _ in _DEFINITIONS]
