"""Speculative decoding: does drafting pay? Per configuration, acceptance overall and by draft position, the
round's time in the draft, in the verify batch and on the host, and the speculative loop's tokens per second
against the target decoding alone.

Reads a session's `steps` table (role, phase and the `round` tag of gpuscope.session.workloads.speculative) and
its `spec_rounds` table. The target alone is measured where the trace has plain decode steps of it (the workload's
baseline); else it is estimated from the target's verify steps, and the method is named in the summary.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

# A plain rate needs this many intervals between consecutive one-token steps of the target.
MIN_PLAIN_INTERVALS = 3

ROUND_COLUMNS = ["config", "round", "drafted", "accepted", "emitted", "verify_tokens", "draft_steps", "draft_ns",
                 "verify_ns", "wall_ns", "host_ns"]
POSITION_COLUMNS = ["config", "position", "drafted", "accepted", "rate", "rate_if_reached"]
SUMMARY_COLUMNS = [
    "config", "rounds", "draft_max", "drafted", "accepted", "acceptance", "emitted", "tokens_per_round",
    "draft_ns_per_round", "verify_ns_per_round", "host_ns_per_round", "draft_share", "draft_ns_per_step",
    "draft_ns_per_accepted", "verify_ns_per_accepted", "spec_ns_per_token", "spec_tokens_per_s",
    "plain_ns_per_token", "plain_tokens_per_s", "plain_method", "plain_steps", "plain_upper_bound", "speedup",
    "saving_ns_per_token", "saving_share", "best_draft_max", "best_draft_ns_per_token",
]


class Speculation(NamedTuple):
    """summary: one row per configuration (see SUMMARY_COLUMNS); by_position: acceptance at each draft position;
    rounds: one row per round with its times."""
    summary: pd.DataFrame
    by_position: pd.DataFrame
    rounds: pd.DataFrame


def speculation(steps: pd.DataFrame | None, spec_rounds: pd.DataFrame | None) -> Speculation:
    """The speculative loop of every configuration that ran one (empty frames when none did)."""
    per_round = rounds(steps, spec_rounds)
    positions = by_position(per_round)
    return Speculation(summary(steps, per_round, positions), positions, per_round)


def rounds(steps: pd.DataFrame | None, spec_rounds: pd.DataFrame | None) -> pd.DataFrame:
    """One row per round: drafts, accepted, tokens emitted (the accepted drafts and the target's own next token),
    the draft's and the verify batch's step time, and the round's wall time (the host's work included)."""
    if steps is None or spec_rounds is None or not len(spec_rounds) or "round" not in steps.columns:
        return pd.DataFrame(columns=ROUND_COLUMNS)
    in_rounds = steps[steps["round"].fillna(-1).astype(int) >= 0]
    table = spec_rounds.copy()
    if "config" not in table.columns:  # written before rounds named their configuration: one loop per trace
        table["config"] = in_rounds["config"].iloc[0] if len(in_rounds) else ""
    keys = ["config", "round"]
    draft = in_rounds[in_rounds["role"] == "draft"].groupby(keys)["wall_ns"].agg(["sum", "size"])
    verify = in_rounds[in_rounds["phase"] == "verify"].groupby(keys)["wall_ns"].sum()
    span = in_rounds.groupby(keys).agg(begin=("t_begin_ns", "min"), end=("t_end_ns", "max"))
    index = pd.MultiIndex.from_frame(table[keys])
    table["emitted"] = table["accepted"] + 1
    table["draft_steps"] = draft["size"].reindex(index).fillna(0).to_numpy(np.int64)
    table["draft_ns"] = draft["sum"].reindex(index).fillna(0).to_numpy(float)
    table["verify_ns"] = verify.reindex(index).fillna(0).to_numpy(float)
    if {"t_begin_ns", "t_end_ns"} <= set(table.columns):
        table["wall_ns"] = (table["t_end_ns"] - table["t_begin_ns"]).astype(float)
    else:  # without the round's own times: first step's begin to last step's end (the host's tail is missed)
        spans = span.reindex(index)
        table["wall_ns"] = (spans["end"] - spans["begin"]).to_numpy(float)
    table["host_ns"] = table["wall_ns"] - table["draft_ns"] - table["verify_ns"]
    return table[ROUND_COLUMNS].reset_index(drop=True)


def by_position(per_round: pd.DataFrame) -> pd.DataFrame:
    """Per configuration and draft position (1 = the first drafted token): rounds that drafted that far, rounds
    that had it accepted, `rate` = their ratio, `rate_if_reached` = accepted among the rounds whose earlier drafts
    were all accepted (a greedy round stops at its first rejection)."""
    rows = []
    for config, group in per_round.groupby("config", sort=False):
        drafted, accepted = group["drafted"].to_numpy(), group["accepted"].to_numpy()
        for position in range(1, int(drafted.max(initial=0)) + 1):
            reached = (accepted >= position - 1) & (drafted >= position)
            n_drafted, n_accepted = int((drafted >= position).sum()), int((accepted >= position).sum())
            rows.append({"config": config, "position": position, "drafted": n_drafted, "accepted": n_accepted,
                         "rate": n_accepted / n_drafted, "rate_if_reached": n_accepted / max(int(reached.sum()), 1)})
    return pd.DataFrame(rows, columns=POSITION_COLUMNS)


def plain_decoding(steps: pd.DataFrame | None) -> pd.DataFrame:
    """Per configuration, the target decoding alone as measured: one-token decode steps of the target that follow
    each other, time per token = mean interval between their begins (the step and the host's sampling between
    steps); plain_steps: the intervals timed. The first step of a run of them is left out: it follows another batch
    shape and rebuilds the graph."""
    columns = ["config", "plain_ns_per_token", "plain_steps"]
    if steps is None or not len(steps) or "role" not in steps.columns:
        return pd.DataFrame(columns=columns)
    ordered = steps.sort_values("step")
    plain = ((ordered["role"] == "target") & (ordered["phase"] == "decode") & (ordered["n_tokens"] == 1)
             & (ordered["status"] == 0)).to_numpy()
    begins = ordered["t_begin_ns"].to_numpy(np.int64)
    config = ordered["config"].to_numpy()
    # an interval from step i to i+1 counts when both are plain and step i is not the first of its run
    counted = (plain[1:-1] & plain[2:] & plain[:-2] & (config[1:-1] == config[2:]) & (config[1:-1] == config[:-2]))
    intervals = pd.DataFrame({"config": config[1:-1][counted],
                              "interval": (begins[2:] - begins[1:-1])[counted]})
    table = intervals.groupby("config", sort=False)["interval"].agg(["mean", "size"]).reset_index()
    table = table[table["size"] >= MIN_PLAIN_INTERVALS]
    return pd.DataFrame({"config": table["config"], "plain_ns_per_token": table["mean"].astype(float),
                         "plain_steps": table["size"].astype(int)}, columns=columns)


def _estimated_plain(steps: pd.DataFrame, config: str) -> tuple[float, str, int, bool]:
    """The target alone from the loop's own steps: a one-token verify step (drafting stopped before the first
    draft) is a plain step; else the shortest verify batch stands in for one, an upper bound of a one-token step.
    Either way plus the host's median time between two steps of a round (sampling a token, as plain decoding
    does after each step)."""
    mine = steps[(steps["config"] == config) & (steps["round"].fillna(-1).astype(int) >= 0)].sort_values("step")
    same_round = mine["round"].to_numpy()[1:] == mine["round"].to_numpy()[:-1]
    gaps = (mine["t_begin_ns"].to_numpy(np.int64)[1:] - mine["t_end_ns"].to_numpy(np.int64)[:-1])[same_round]
    host = float(np.median(gaps)) if len(gaps) else 0.0
    verify = mine[mine["phase"] == "verify"]
    if not len(verify):  # the run ended before its first verify batch
        return np.nan, "none: the trace has no plain decode step or verify step of the target", 0, True
    shortest = int(verify["n_tokens"].min())
    chosen = verify.loc[verify["n_tokens"] == shortest, "wall_ns"]
    step = float(chosen.median())
    if shortest == 1:
        return step + host, "estimated: the target's one-token verify steps plus the host's time between steps", \
            len(chosen), False
    return step + host, (f"estimated: the target's {shortest}-token verify steps as one token's step (an upper "
                         "bound, so the saving is at least this) plus the host's time between steps"), len(chosen), True


def best_draft_max(per_round: pd.DataFrame, positions: pd.DataFrame) -> tuple[int, float]:
    """The draft length with the least time per emitted token, and that time: a round drafting m of its k tokens
    costs one draft step less per position dropped (the verify batch kept at its measured length, so a shorter
    one is estimated from above) and emits 1 + the rounds' accepted drafts at positions 1..m, on average."""
    draft_steps = per_round["draft_steps"].sum()
    draft_step_ns = per_round["draft_ns"].sum() / draft_steps if draft_steps else 0.0
    k = len(positions)
    if not k:  # nothing was drafted
        return 0, float(per_round["wall_ns"].mean())
    lengths = np.arange(1, k + 1)
    round_ns = per_round["wall_ns"].mean() - (k - lengths) * draft_step_ns
    emitted = 1 + np.cumsum(positions["accepted"].to_numpy()) / len(per_round)
    per_token = round_ns / emitted
    best = int(np.argmin(per_token))
    return int(lengths[best]), float(per_token[best])


def summary(steps: pd.DataFrame | None, per_round: pd.DataFrame, positions: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration with rounds: acceptance, time per round and per accepted token, the speculative
    loop's rate (tokens emitted / the rounds' wall time) against the target alone, what turning drafting off
    saves per emitted token (saving_ns_per_token; negative: speculation is faster), and the draft length that
    would take the least time per token (best_draft_max, see there)."""
    if not len(per_round):
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    measured = plain_decoding(steps).set_index("config")
    rows = []
    for config, group in per_round.groupby("config", sort=False):
        best, best_ns = best_draft_max(group, positions[positions["config"] == config])
        drafted, accepted = int(group["drafted"].sum()), int(group["accepted"].sum())
        wall, emitted = float(group["wall_ns"].sum()), int(group["emitted"].sum())
        spec = wall / emitted
        if config in measured.index:
            plain = float(measured.at[config, "plain_ns_per_token"])
            method, n_plain, upper = ("measured: the target's plain decode steps",
                                      int(measured.at[config, "plain_steps"]), False)
        else:
            plain, method, n_plain, upper = _estimated_plain(steps, config)
        draft_steps = int(group["draft_steps"].sum())
        rows.append({
            "config": config, "rounds": len(group), "draft_max": int(group["drafted"].max()), "drafted": drafted,
            "accepted": accepted, "acceptance": accepted / drafted if drafted else np.nan, "emitted": emitted,
            "tokens_per_round": emitted / len(group),
            "draft_ns_per_round": float(group["draft_ns"].mean()),
            "verify_ns_per_round": float(group["verify_ns"].mean()),
            "host_ns_per_round": float(group["host_ns"].mean()), "draft_share": float(group["draft_ns"].sum()) / wall,
            "draft_ns_per_step": float(group["draft_ns"].sum()) / draft_steps if draft_steps else np.nan,
            "draft_ns_per_accepted": float(group["draft_ns"].sum()) / accepted if accepted else np.nan,
            "verify_ns_per_accepted": float(group["verify_ns"].sum()) / accepted if accepted else np.nan,
            "spec_ns_per_token": spec, "spec_tokens_per_s": 1e9 / spec,
            "plain_ns_per_token": plain, "plain_tokens_per_s": 1e9 / plain, "plain_method": method,
            "plain_steps": n_plain, "plain_upper_bound": upper, "speedup": plain / spec,
            "saving_ns_per_token": spec - plain, "saving_share": (spec - plain) / spec,
            "best_draft_max": best, "best_draft_ns_per_token": best_ns,
        })
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
