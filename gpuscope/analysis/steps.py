"""Decode steps: one row per `llama_decode`, built from the hook events (events join to them with
gpuscope.trace.steps.join_to_steps, by thread).

A step starts at DECODE_BEGIN and ends at DECODE_SYNCED (the step's work really finished) or, when the program
never synchronized it, at DECODE_SUBMITTED (llama_decode returned). Its wall time is the synced duration when
there is one: for an asynchronous backend the submitted duration only measures queueing the work.
These are the hooks every engine program emits, so the table works for `gpuscope record` traces of any program;
a session's own `steps` table (configuration labels) is joined on the step id when the trace has one.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

# Columns of the step table, in order.
STEP_COLUMNS = [
    "step", "run", "config", "ctx", "tid", "t_begin_ns", "t_end_ns", "wall_ns", "submit_ns", "wait_ns", "idle_ns",
    "n_tokens", "n_outputs", "n_seqs", "pos_min", "pos_max", "kv_used", "context", "n_kv", "n_ubatches",
    "n_nodes", "graph_reused", "status", "complete", "cold_start", "role",
]

_FAR_FUTURE = np.iinfo(np.int64).max


def _ints(frame: pd.DataFrame, column: str) -> np.ndarray:
    return frame[column].to_numpy(dtype=np.int64) if len(frame) else np.empty(0, np.int64)


def is_decode(steps: pd.DataFrame) -> pd.Series:
    """Which steps decode (one token per sequence); the others are prefill (a prompt's tokens in one batch)."""
    return steps["n_tokens"] == steps["n_seqs"].fillna(1)


def event_runs(frame: pd.DataFrame) -> np.ndarray:
    """The run each event belongs to in a trace combined from several: the `run` column that gpuscope.trace.combine
    adds, else a session's `config` column (sweeps written before combine added `run` to them), else 0."""
    if "run" in frame.columns:
        return frame["run"].to_numpy(np.int64)
    if "config" in frame.columns:
        return pd.factorize(frame["config"])[0].astype(np.int64)
    return np.zeros(len(frame), np.int64)


def main_process(frame: pd.DataFrame) -> pd.DataFrame:
    """The events of the engine's own process (a session also records its RPC servers' rings)."""
    if "process" in frame.columns:
        return frame[(frame["process"] == "main").to_numpy(bool)]
    return frame


def step_table(decode_begin: pd.DataFrame, ubatch: pd.DataFrame, decode_submitted: pd.DataFrame,
               decode_synced: pd.DataFrame, *, session_steps: pd.DataFrame | None = None,
               meta: dict | None = None) -> pd.DataFrame:
    """One row per decode step that began while the ring was open.

    `context` is the KV cells in use once the step's tokens are in (kv_used + n_tokens); `n_kv` the cells the
    step's attention really spans (the padded view of its widest ubatch). `complete` is False for a step that
    never returned (the engine died in it) or failed (status != 0)."""
    meta = meta or {}
    decode_begin_all = decode_begin
    decode_begin, ubatch, decode_submitted, decode_synced = (
        main_process(frame) for frame in (decode_begin, ubatch, decode_submitted, decode_synced))
    if not len(decode_begin):
        return pd.DataFrame({name: pd.Series(dtype=_STEP_DTYPES.get(name, "int64")) for name in STEP_COLUMNS})
    steps = pd.DataFrame({
        "step": _ints(decode_begin, "step"),
        "ctx": _ints(decode_begin, "ctx"),
        "tid": _ints(decode_begin, "tid"),
        "t_begin_ns": _ints(decode_begin, "ts_ns"),
        "n_tokens": _ints(decode_begin, "n_tokens"),
        "n_outputs": _ints(decode_begin, "n_outputs"),
        "n_seqs": _ints(decode_begin, "n_seqs"),
        "pos_min": _ints(decode_begin, "pos_min"),
        "pos_max": _ints(decode_begin, "pos_max"),
        "kv_used": _ints(decode_begin, "kv_used"),
        "run": event_runs(decode_begin),
    })
    steps["context"] = steps["kv_used"] + steps["n_tokens"]

    if len(ubatch):
        per_step = pd.DataFrame({
            "step": _ints(ubatch, "step"), "n_kv": _ints(ubatch, "n_kv"), "n_nodes": _ints(ubatch, "n_nodes"),
            "graph_reused": ubatch["graph_reused"].to_numpy(dtype=bool),
        }).groupby("step", sort=False).agg(n_kv=("n_kv", "max"), n_nodes=("n_nodes", "max"),
                                           graph_reused=("graph_reused", "all"), n_ubatches=("n_kv", "size"))
        steps = steps.merge(per_step, left_on="step", right_index=True, how="left")
    else:
        steps = steps.assign(n_kv=np.nan, n_nodes=np.nan, graph_reused=np.nan, n_ubatches=np.nan)

    submitted = pd.DataFrame({
        "step": _ints(decode_submitted, "step"), "submitted_at": _ints(decode_submitted, "ts_ns"),
        "submit_ns": _ints(decode_submitted, "duration_ns"), "status": _ints(decode_submitted, "status"),
    }).drop_duplicates("step", keep="last")
    synced = pd.DataFrame({
        "step": _ints(decode_synced, "step"), "synced_at": _ints(decode_synced, "ts_ns"),
        "synced_ns": _ints(decode_synced, "duration_ns"), "wait_ns": _ints(decode_synced, "wait_ns"),
    }).drop_duplicates("step", keep="last")
    steps = steps.merge(submitted, on="step", how="left").merge(synced, on="step", how="left")

    has_sync = steps["synced_at"].notna()
    steps["wall_ns"] = steps["synced_ns"].where(has_sync, steps["submit_ns"])
    steps["t_end_ns"] = steps["synced_at"].where(has_sync, steps["submitted_at"])
    # the program's own time between llama_decode returning and it asking for the results
    steps["idle_ns"] = (steps["synced_ns"] - steps["submit_ns"] - steps["wait_ns"]).clip(lower=0).where(has_sync, 0)
    steps["complete"] = steps["submitted_at"].notna() & (steps["status"].fillna(0) == 0)
    # a step the engine never returned from runs until the end of the trace
    steps["t_end_ns"] = steps["t_end_ns"].fillna(_FAR_FUTURE).astype(np.int64)

    # a session tags events with the step of its own steps table they fall in (`in_step`)
    session_ids = (pd.Series(main_process(decode_begin_all)["in_step"].to_numpy(), index=_ints(decode_begin, "step"))
                   if "in_step" in decode_begin_all.columns else None)
    steps["config"] = _config_labels(steps, session_steps, session_ids, meta)
    steps["role"] = _roles(steps, session_steps, session_ids)
    steps = steps.sort_values(["t_begin_ns", "step"], kind="stable").reset_index(drop=True)
    # a context's first step, or one on an empty cache (a warm-up run, a new prompt), pays one-time costs
    steps["cold_start"] = ~steps.duplicated(["run", "ctx"], keep="first") | (steps["kv_used"] == 0)
    return steps[STEP_COLUMNS]


_STEP_DTYPES = {"config": "object", "wall_ns": "float64", "submit_ns": "float64", "wait_ns": "float64",
                "idle_ns": "float64", "n_kv": "float64", "n_nodes": "float64", "n_ubatches": "float64",
                "graph_reused": "object", "status": "float64", "complete": "bool", "cold_start": "bool",
                "role": "object"}


def _roles(steps: pd.DataFrame, session_steps: pd.DataFrame | None, session_ids: pd.Series | None) -> pd.Series:
    """Which model of the session decoded each step: 'target', or 'draft' for speculative decoding's draft
    (a program's steps, and a session's of one model, are all the target's)."""
    target = pd.Series("target", index=steps.index, dtype=object)
    if session_steps is None or session_ids is None or "role" not in session_steps.columns:
        return target
    roles = session_steps.drop_duplicates("step", keep="last").set_index("step")["role"].astype(str)
    # object before filling: a damaged trace whose steps match no session maps to an all-NaN float column
    mapped = steps["step"].map(session_ids).map(roles).astype(object)
    return mapped.where(mapped.notna(), target)


def _config_labels(steps: pd.DataFrame, session_steps: pd.DataFrame | None, session_ids: pd.Series | None,
                   meta: dict) -> pd.Series:
    """The configuration each step ran under: the session's label, the trace's, or the context's order of
    appearance within its run (a program that makes several contexts, as llama-bench does per test)."""
    if session_steps is not None and session_ids is not None and len(session_steps) and \
            {"step", "config"} <= set(session_steps.columns):
        rows = session_steps.drop_duplicates("step", keep="last").set_index("step")
        labels = rows["config"].astype(str)
        if "role" in rows.columns and rows["role"].nunique() > 1:  # a draft model decodes beside the target
            labels = labels.where(rows["role"].astype(str) == "target", labels + " (" + rows["role"].astype(str) + ")")
        found = steps["step"].map(session_ids).map(labels)
        if found.notna().all():
            return found
    if meta.get("config_label"):
        return pd.Series(meta["config_label"], index=steps.index)
    program = Path(str(meta.get("program") or (meta.get("command") or ["run"])[0])).name
    spans = steps.groupby(["run", "ctx"], sort=False).agg(begin=("t_begin_ns", "min"), end=("t_end_ns", "max")) \
        .reset_index().sort_values(["run", "begin"], kind="stable")
    nodes = steps.dropna(subset=["n_nodes"]).groupby(["run", "ctx", "n_tokens"])["n_nodes"].median()
    nodes_of: dict[tuple, dict] = {}
    for (run, ctx, n_tokens), value in nodes.items():
        nodes_of.setdefault((run, ctx), {})[n_tokens] = value
    group_of: dict[tuple, int] = {}
    for run, contexts in itertools.groupby(spans.itertuples(index=False), key=lambda row: row.run):
        found = _context_groups([(row.ctx, row.begin, row.end, nodes_of.get((run, row.ctx), {})) for row in contexts])
        group_of.update({(run, ctx): group for ctx, group in found.items()})
    several = max(group_of.values(), default=0) > 0
    labels = {key: f"{program}:{group}" if several else program for key, group in group_of.items()}
    return pd.Series([labels[key] for key in zip(steps["run"], steps["ctx"])], index=steps.index)


def _context_groups(contexts: list[tuple]) -> dict[int, int]:
    """Contexts of one run that are one configuration: a program such as llama-bench makes a context per test,
    one after another, with the same graph for the same batch size. Contexts alive at the same time (a target and
    a draft model), or whose graphs differ for the same batch size (another model, FlashAttention on or off), are
    kept apart. `contexts`: (ctx, first begin, last end, {n_tokens: graph nodes}) in order of appearance."""
    groups: list[list[tuple]] = []
    assigned: dict[int, int] = {}
    for ctx, begin, end, nodes in contexts:
        for index, members in enumerate(groups):
            overlaps = any(begin <= m_end and m_begin <= end for _, m_begin, m_end, _ in members)
            differs = any(nodes.get(n, m_nodes[n]) != m_nodes[n] for *_, m_nodes in members for n in m_nodes)
            if not overlaps and not differs:
                members.append((ctx, begin, end, nodes))
                assigned[ctx] = index
                break
        else:
            groups.append([(ctx, begin, end, nodes)])
            assigned[ctx] = len(groups) - 1
    return assigned
