"""Workloads: decode patterns that make an engine's costs visible, each producing a trace.

  sweep_loop              step time against context depth (gpuscope.runs.sweep runs it per configuration)
  speculative             draft k tokens, verify k+1 in one batch, roll the rejected suffix back from both caches
  capture_hidden_states   an eval callback that copies chosen tensors out every step, against a plain baseline

Each workload is a loop over a session (`*_loop`), run with `session.run(...)` so that it runs inside the worker
of an isolated session, and a function that wraps it and builds the trace.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from gpuscope.errors import SessionError
from gpuscope.session.capture import TensorCapture
from gpuscope.trace.model import Trace, save_trace

DEFAULT_DEPTHS = (0, 512, 1024, 2048)
DEFAULT_STEPS = 32
DEFAULT_PROMPT = "The history of the printing press begins in"


# -- context sweep -----------------------------------------------------------------------------------------------

def sweep_loop(session, depths: Sequence[int], n_steps: int, seed: int = 0) -> None:
    """For each depth (ascending): fill the context to it, then decode `n_steps` single tokens. The cache is
    reused between depths: the decoded tokens are rolled back and the fill continues from the last depth."""
    session.clear()
    for depth in sorted(depths):
        if session.position() > depth:
            session.rollback(depth)
        with session.tagged(depth=depth):
            session.fill(depth)
            for token in session.random_tokens(n_steps, seed=seed + depth):
                session.decode([token])


# -- speculative decoding ----------------------------------------------------------------------------------------

def speculative_loop(session, prompt: str | Sequence[int], n_tokens: int, draft_max: int,
                     p_min: float, baseline: int = 0) -> list[dict]:
    """Greedy speculative decoding with the session's draft model; returns one row per round.

    The target decodes `baseline` tokens alone (phase 'decode'), half after the prompt (the draft takes them in with
    its prefill) and half after the rounds, so that its plain decoding is measured on the machine as the rounds
    found it. Each round the draft decodes one token at a time and proposes up to `draft_max` tokens (stopping
    early when its top probability falls under `p_min`), the target verifies the last committed token plus the
    drafts in one batch, the longest agreeing prefix is kept, and `llama_memory_seq_rm` removes the rest from both
    caches."""
    for role in ("target", "draft"):
        session.clear(role)
    prompt_tokens = session.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
    with session.tagged(round=-1):
        session.decode(prompt_tokens, role="target", phase="prefill")
        last = session.argmax(role="target")
        for _ in range(baseline // 2):
            prompt_tokens.append(last)
            last = _plain_step(session, last)
        session.decode(prompt_tokens, role="draft", phase="prefill")
    generated = [last]
    draft_pending: list[int] = []  # committed tokens the draft has not decoded yet
    rounds: list[dict] = []
    n_ctx = min(session.n_ctx("target"), session.n_ctx("draft"))
    while len(generated) < n_tokens and session.position("target") + draft_max + 2 <= n_ctx:
        base = session.position("target")
        begin = time.monotonic_ns()  # the round's wall time includes the host's work between its steps
        with session.tagged(round=len(rounds)):
            drafts: list[int] = []
            feed = draft_pending + [last]
            while len(drafts) < draft_max:
                session.decode(feed, role="draft", phase="draft")
                token, probability = session.top(role="draft")
                if probability < p_min:
                    break
                drafts.append(token)
                feed = [token]
            session.decode([last] + drafts, outputs="all", role="target", phase="verify")
            verified = [session.argmax(i, role="target") for i in range(len(drafts) + 1)]
        accepted = 0
        while accepted < len(drafts) and drafts[accepted] == verified[accepted]:
            accepted += 1
        keep = base + 1 + accepted  # the last committed token and the accepted drafts stay
        session.rollback(keep, role="target")
        draft_at = session.position("draft")
        if draft_at > keep:
            session.rollback(keep, role="draft")
        draft_pending = ([last] + drafts[:accepted])[min(draft_at, keep) - base:]
        last = verified[accepted]
        generated += drafts[:accepted] + [last]
        rounds.append({"round": len(rounds), "config": session.label, "position": base, "drafted": len(drafts),
                       "accepted": accepted, "verify_tokens": len(drafts) + 1, "t_begin_ns": begin,
                       "t_end_ns": time.monotonic_ns()})
    with session.tagged(round=-1):
        for _ in range(min(baseline - baseline // 2, session.n_ctx("target") - session.position("target"))):
            last = _plain_step(session, last)
    return rounds


def plain_loop(session, prompt: str | Sequence[int], n_tokens: int) -> None:
    """The target alone, what speculation is measured against: the prompt, then `n_tokens` greedy tokens one at a
    time."""
    session.decode(session.tokenize(prompt) if isinstance(prompt, str) else list(prompt), phase="prefill")
    token = session.argmax()
    for _ in range(n_tokens):
        token = _plain_step(session, token)


def _plain_step(session, token: int) -> int:
    """The target alone: decode `token`, return the next greedy one."""
    session.decode([token], role="target", phase="decode")
    return session.argmax(role="target")


def speculative(session, prompt: str | Sequence[int] = DEFAULT_PROMPT, *, n_tokens: int = 64, draft_max: int = 4,
                p_min: float = 0.0, baseline: int = 32, out: str | os.PathLike | None = None) -> Trace:
    """Run the speculative loop on a session opened with draft_model=...; the trace gets a `spec_rounds` table
    (drafted, accepted, verify length and wall time per round) and the acceptance rate in meta['workload'].

    baseline: tokens the target decodes alone, so that the trace can tell whether speculation beats plain decoding
    (gpuscope.analysis.speculation). p_min > 0 lets the draft stop early, so verify batches vary in
    length: each new length defeats the engine's graph reuse (ubatch events with graph_reused=0)."""
    if draft_max < 1 or n_tokens < 1 or baseline < 0 or not 0.0 <= p_min <= 1.0:
        raise SessionError("speculative needs draft_max >= 1, n_tokens >= 1, baseline >= 0 and 0 <= p_min <= 1")
    rounds = pd.DataFrame(session.run(speculative_loop, prompt, n_tokens, draft_max, p_min, baseline),
                          columns=["round", "config", "position", "drafted", "accepted", "verify_tokens",
                                   "t_begin_ns", "t_end_ns"])
    drafted = int(rounds["drafted"].sum())
    workload = {"name": "speculative", "n_tokens": n_tokens, "draft_max": draft_max, "p_min": p_min,
                "baseline": baseline,
                "rounds": len(rounds), "drafted": drafted, "accepted": int(rounds["accepted"].sum()),
                "acceptance_rate": float(rounds["accepted"].sum() / drafted) if drafted else None}
    trace = session.trace(tables={"spec_rounds": rounds}, workload=workload)
    if out is not None:
        save_trace(trace, out)
    return trace


# -- hidden-state capture ----------------------------------------------------------------------------------------

def capture_loop(session, capture: TensorCapture, depth: int, n_steps: int, seed: int = 0) -> list[dict]:
    """`n_steps` plain decode steps at `depth`, then the same steps with `capture` installed (active only while
    decoding, not while filling); returns what it captured."""
    tokens = session.random_tokens(n_steps, seed=seed)
    for capturing in (False, True):
        session.set_capture(capture if capturing else None)  # a new context: the cache starts empty
        capture.active = False
        with session.tagged(capture=capturing, depth=depth):
            session.fill(depth)
            capture.active = capturing
            for token in tokens:
                session.decode([token])
    session.set_capture(None)
    return capture.records


def capture_hidden_states(session, select: str | Iterable[str] | Callable[[str], bool] = r"l_out-\d+", *,
                          depth: int = 0, n_steps: int = 16, keep_data: bool = True,
                          out: str | os.PathLike | None = None) -> tuple[Trace, list[dict]]:
    """Capture the tensors `select` names (default: the residual stream after every layer) for `n_steps` decode
    steps, beside a baseline without the callback. Returns the trace (a `captures` table with step, name, type,
    shape; the per-step cost in meta['workload']) and the captured records (with `data` arrays)."""
    records = session.run(capture_loop, TensorCapture(select, keep_data=keep_data), depth, n_steps)
    captures = pd.DataFrame([{key: (str(value) if key == "shape" else value) for key, value in record.items()
                              if key != "data"} for record in records], columns=["step", "name", "type", "shape"])
    steps = session.steps
    measured = steps[(steps["phase"] == "decode") & steps["capture"].notna()]
    capturing = measured["capture"].astype(bool)
    per_step = captures.groupby("step").size()
    workload = {
        "name": "capture", "depth": depth, "n_steps": n_steps,
        "tensors_per_step": float(per_step.mean()) if len(per_step) else 0.0,
        "median_step_ns_plain": _median(measured.loc[~capturing, "wall_ns"]),
        "median_step_ns_capturing": _median(measured.loc[capturing, "wall_ns"]),
    }
    trace = session.trace(tables={"captures": captures}, workload=workload)
    if out is not None:
        save_trace(trace, out)
    return trace, records


def _median(values: pd.Series) -> float | None:
    return float(np.median(values)) if len(values) else None
