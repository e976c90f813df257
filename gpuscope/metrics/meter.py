"""One ring's events turned into the exporter's series, a poll at a time, with what the conditions for a capture
need to know. The meaning of each event is the one the analyses give it: steps from gpuscope.analysis.steps
(step_table, is_decode), memory held from gpuscope.analysis.memory (held_now), FlashAttention plans named by
gpuscope.analysis.fa_routes, events put in their step by gpuscope.trace.steps.

A step's events may arrive over two polls, so the events of steps not finished yet are kept (and only those): a
step is finished once synchronized, or once returned and followed by another step of its thread or older than
`SETTLE_NS` (a program that never synchronizes); steps are assembled every `STEPS_EVERY_NS` at most. Every other
kind is counted as it arrives; what is kept is bounded by the steps in flight, the buffers alive and the last minute
of re-plans.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import pandas as pd

from gpuscope.analysis.columns import text
from gpuscope.analysis.fa_routes import none_plans
from gpuscope.analysis.memory import held_now
from gpuscope.analysis.steps import is_decode, step_table
from gpuscope.metrics.series import Series
from gpuscope.trace.steps import join_to_steps

STEP_KINDS = ("decode_begin", "ubatch", "decode_submitted", "decode_synced")
# the kinds the meter reads: the others (marks, splits, meta parts) are left undecoded
KINDS = frozenset(STEP_KINDS) | {"gallocr_realloc", "sched_reserve", "fa_plan", "op_placement", "sync", "copy",
                                 "buffer"}
SETTLE_NS = 2_000_000_000
# steps are assembled every 5 s at most (a scrape comes every 15 s or so): step_table costs 10-50 ms on this 2-core
# machine whatever the number of steps (pandas merges), measured while following a llama-server, a poll's other
# work a few ms
STEPS_EVERY_NS = 5_000_000_000
REPLAN_MEMORY_NS = 60_000_000_000  # re-plans kept to be put in their steps, which finish within seconds
REPLAN_STEPS = 8  # "re-plans every step": this many finished steps in a row re-planned


@dataclass(frozen=True)
class Fired:
    """A condition for a capture, seen in this poll: its reason and what it saw, in words."""
    reason: str
    detail: str


def batch_bucket(tokens: int) -> str:
    """A batch size as the power of two at or above it ('1', '2', '4', ... '512'): bounded labels."""
    return str(1 << max(int(tokens) - 1, 0).bit_length())


def fa_shape(plan) -> str:
    """An attention shape as a label: head sizes of K and V, then their types ('k256v256 f16/f16')."""
    return f"k{plan.head_dim_k}v{plan.head_dim_v} {plan.type_k}/{plan.type_v}"


class Meter:
    """The series of one ring (its label values in `labels`, a dict of RING_LABELS) from its events, poll by poll.

    `op_names`: the engine's ggml_op names by value; `slow_step_s`: a step slower than this fires `slow_step`."""

    def __init__(self, series: Series, labels: dict[str, str], *, op_names: dict[int, str] | None = None,
                 slow_step_s: float | None = None, replan_steps: int = REPLAN_STEPS):
        self.series = series
        self.ring_values = tuple(series.label(name, labels[name]) for name in labels)
        self.op_names = op_names or {}
        self.slow_step_s = slow_step_s
        self._steps = {kind: None for kind in STEP_KINDS}  # events of steps not finished yet
        self._steps_at = 0  # when the steps were last looked at
        self._buffers: pd.DataFrame | None = None  # buffer events of the buffers alive
        self._held: set[tuple[str, str]] = set()
        self._replans = pd.DataFrame({"ts_ns": pd.Series(dtype=np.int64), "tid": pd.Series(dtype=np.int64)})
        self._replanned = deque(maxlen=replan_steps)

    def _count(self, name: str, *values, amount: float = 1.0) -> None:
        if amount:
            self.series[name].labels(*self.ring_values, *values).inc(amount)

    def _counts(self, name: str, frame: pd.DataFrame, columns: dict[str, str], weight: str | None = None,
                scale: float = 1.0) -> None:
        """Add the rows of `frame` (or their `weight`) per value of `columns` (frame column -> label name)."""
        if not len(frame):
            return
        keys = [text(frame[column]) for column in columns]
        # one code per distinct combination of the key columns' category codes, in numpy (a poll is small, and
        # pandas' groupby costs about a millisecond whatever the size)
        codes = np.stack([key.cat.codes.to_numpy(np.int64) for key in keys])
        combinations, inverse = np.unique(codes, axis=1, return_inverse=True)
        weights = frame[weight].to_numpy(np.float64) * scale if weight else None
        totals = np.bincount(inverse.reshape(-1), weights=weights, minlength=combinations.shape[1])
        for combination, amount in zip(combinations.T, totals):
            values = [key.cat.categories[code] if code >= 0 else None for key, code in zip(keys, combination)]
            self._count(name, *(self.series.label(label, value) for label, value in zip(columns.values(), values)),
                        amount=float(amount))

    # -- one poll -----------------------------------------------------------------------------------------------

    def feed(self, tables: dict[str, pd.DataFrame], now_ns: int) -> list[Fired]:
        """Count the events of one poll (decoded tables by kind); the conditions that fired."""
        fired: list[Fired] = []
        self._plans(tables, fired)
        for kind in ("gallocr_realloc", "sched_reserve"):
            if kind in tables and len(tables[kind]):
                frame = tables[kind]
                self._replans = pd.concat([self._replans, pd.DataFrame({
                    "ts_ns": frame["ts_ns"].to_numpy(np.int64), "tid": frame["tid"].to_numpy(np.int64)})],
                    ignore_index=True)
        self._counts("replans", tables.get("gallocr_realloc", _EMPTY), {"reason": "reason"})
        reserves = tables.get("sched_reserve", _EMPTY)
        self._counts("reserves", reserves, {"trigger": "trigger"})
        if len(reserves):
            reserves = reserves.assign(total_ns=reserves["sync_ns"].astype(np.float64) + reserves["reserve_ns"])
            self._counts("reserve_seconds", reserves, {"trigger": "trigger"}, "total_ns", 1e-9)
        sync = tables.get("sync", _EMPTY)
        self._counts("syncs", sync, {"backend": "device", "reason": "reason"})
        self._counts("sync_seconds", sync, {"backend": "device", "reason": "reason"}, "duration_ns", 1e-9)
        copy = tables.get("copy", _EMPTY)
        self._counts("copies", copy, {"src_device": "device", "dst_device": "device", "mode": "mode"})
        self._counts("copy_bytes", copy, {"src_device": "device", "dst_device": "device"}, "bytes")
        self._counts("copy_seconds", copy, {"src_device": "device", "dst_device": "device"}, "duration_ns", 1e-9)
        self._placements(tables.get("op_placement", _EMPTY))
        ubatch = tables.get("ubatch", _EMPTY)
        if len(ubatch):
            reused = ubatch["graph_reused"].to_numpy(bool)
            self._count("ubatches", "true", amount=int(reused.sum()))
            self._count("ubatches", "false", amount=int((~reused).sum()))
        if "buffer" in tables and len(tables["buffer"]):
            self._memory(tables["buffer"])
        fired += self._finish_steps(tables, now_ns)
        return fired

    def _plans(self, tables: dict, fired: list[Fired]) -> None:
        fa_plan = tables.get("fa_plan", _EMPTY)
        if not len(fa_plan):
            return
        self._counts("fa_plans", fa_plan, {"device": "device", "kernel": "kernel"})
        none = none_plans(fa_plan)
        if not len(none):
            return
        labelled = none.assign(shape=[fa_shape(plan) for plan in none.itertuples()],
                               batch=[batch_bucket(tokens) for tokens in none["q_tokens"]])
        self._counts("fa_no_kernel", labelled, {"device": "device", "shape": "shape", "batch": "batch",
                                                "reason": "reason"})
        first = labelled.iloc[0]
        fired.append(Fired("fa_no_kernel", f"FlashAttention found no kernel for {first['shape']} on "
                                           f"{first['device']} ({first['reason']}, batch {first['q_tokens']})"))

    def _placements(self, op_placement: pd.DataFrame) -> None:
        if not len(op_placement):
            return
        ops = op_placement["op"].to_numpy(np.int64)
        named = op_placement.assign(op_name=[self.op_names.get(int(op), f"op{int(op)}") for op in ops])
        self._counts("ops_off_device", named, {"op_name": "op", "backend": "device", "layer_backend": "device"})

    def _memory(self, buffer: pd.DataFrame) -> None:
        frames = [self._buffers, buffer] if self._buffers is not None else [buffer]
        buffers = pd.concat(frames, ignore_index=True) if len(frames) > 1 else buffer
        held = held_now(buffers)
        now = set()
        gauge = self.series["memory_bytes"]
        for row in held.itertuples(index=False):
            key = (self.series.label("device", row.location), self.series.label("owner", row.owner))
            now.add(key)
            gauge.labels(*self.ring_values, *key).set(float(row.bytes))
        for key in self._held - now:  # every buffer of that location and owner is freed
            gauge.labels(*self.ring_values, *key).set(0.0)
        self._held |= now
        # only the buffers alive are needed again: an address whose last event is a free is done
        address = buffers["buffer"].to_numpy(np.uint64)
        last_action = pd.Series(text(buffers["action"]).to_numpy()).groupby(address).last()
        done = last_action.index[last_action.to_numpy() == "free"]
        self._buffers = buffers[~np.isin(address, done.to_numpy(np.uint64))].reset_index(drop=True)

    # -- steps --------------------------------------------------------------------------------------------------

    def _finish_steps(self, tables: dict, now_ns: int, *, writer_gone: bool = False) -> list[Fired]:
        for kind in STEP_KINDS:
            new = tables.get(kind)
            if new is not None and len(new):
                old = self._steps[kind]
                self._steps[kind] = new if old is None else pd.concat([old, new], ignore_index=True)
        frames = [self._steps[kind] if self._steps[kind] is not None else _EMPTY for kind in STEP_KINDS]
        if not len(frames[0]) or (now_ns - self._steps_at < STEPS_EVERY_NS and not writer_gone):
            return []
        self._steps_at = now_ns
        steps = step_table(*frames, meta=_ONE_CONFIG)
        synced = steps["step"].isin(frames[3]["step"] if len(frames[3]) else [])
        returned = steps["t_end_ns"] < np.iinfo(np.int64).max
        later = steps.groupby("tid")["t_begin_ns"].transform("max") > steps["t_begin_ns"]
        finished = synced | (returned & (later | (now_ns - steps["t_end_ns"] > SETTLE_NS))) | writer_gone
        done = steps[finished.to_numpy(bool)]
        fired = self._observe(done) if len(done) else []
        left = set(steps.loc[~finished.to_numpy(bool), "step"].tolist())
        for kind, frame in zip(STEP_KINDS, frames):
            self._steps[kind] = frame[frame["step"].isin(left).to_numpy(bool)] if len(frame) else None
        self._replans = self._replans[self._replans["ts_ns"] >= now_ns - REPLAN_MEMORY_NS]
        return fired

    def _observe(self, done: pd.DataFrame) -> list[Fired]:
        fired = []
        phases = np.where(is_decode(done).to_numpy(bool), "decode", "prefill")
        timed = done["wall_ns"].notna().to_numpy(bool) & (done["t_end_ns"] < np.iinfo(np.int64).max).to_numpy(bool)
        status = np.where(~timed, "unfinished", np.where(done["complete"].to_numpy(bool), "ok", "failed"))
        for phase, outcome, tokens, wall in zip(phases, status, done["n_tokens"], done["wall_ns"]):
            self._count("steps", phase, outcome)
            self.series["step_tokens"].labels(*self.ring_values, phase).observe(float(tokens))
            if outcome == "ok":
                self.series["step_seconds"].labels(*self.ring_values, phase).observe(float(wall) / 1e9)
        self.series["context_cells"].labels(*self.ring_values).set(float(done["context"].iloc[-1]))
        slow = done[timed & (done["wall_ns"].to_numpy(np.float64) > (self.slow_step_s or np.inf) * 1e9)]
        if self.slow_step_s is not None and len(slow):
            worst = slow.loc[slow["wall_ns"].idxmax()]
            fired.append(Fired("slow_step", f"step {int(worst['step'])} took {worst['wall_ns'] / 1e6:.1f} ms "
                                            f"(threshold {self.slow_step_s * 1e3:g} ms)"))
        in_step = join_to_steps(self._replans, done, by_thread=True)
        replanned = done["step"].isin(in_step.dropna().astype(np.int64)).to_numpy(bool)
        self._count("replanned_steps", amount=int(replanned.sum()))
        self._replanned.extend(replanned.tolist())
        if len(self._replanned) == self._replanned.maxlen and all(self._replanned):
            fired.append(Fired("replans_every_step", f"the graph was re-planned in each of the last "
                                                     f"{self._replanned.maxlen} steps"))
            self._replanned.clear()  # the next firing needs as many steps again
        return fired

    def finish(self, now_ns: int) -> list[Fired]:
        """The writer is gone: every step kept is finished (those it died in count as unfinished)."""
        return self._finish_steps({}, now_ns, writer_gone=True)


# the meter labels steps by their ring: step_table need not tell a program's configurations apart
_ONE_CONFIG = {"config_label": "ring"}
_EMPTY = pd.DataFrame({"seq": pd.Series(dtype=np.int64), "ts_ns": pd.Series(dtype=np.int64),
                       "tid": pd.Series(dtype=np.int64), "step": pd.Series(dtype=np.int64)})
