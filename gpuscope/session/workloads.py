"""Workloads: decode patterns that make an engine's costs visible, each producing a trace.

  sweep                   step time against context depth, for several split configurations in one trace
  speculative             draft k tokens, verify k+1 in one batch, roll the rejected suffix back from both caches
  capture_hidden_states   an eval callback that copies chosen tensors out every step, against a plain baseline

Each workload is a loop over a session (`*_loop`), run with `session.run(...)` so that it runs inside the worker
of an isolated session, and a function that wraps it and builds the trace.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from gpuscope.errors import EngineCrashedError, SessionError, SplitConfigError
from gpuscope.session.assemble import combine_traces
from gpuscope.session.capture import TensorCapture
from gpuscope.models import default_model
from gpuscope.session.config import SplitConfig
from gpuscope.session.model_info import read_model_info
from gpuscope.session.binding import resolve_engine
from gpuscope.session.session import Engine, Session
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


def sweep(configs: Iterable[SplitConfig | dict], model: str | os.PathLike | None = None, *,
          engine: str | os.PathLike | None = None, depths: Sequence[int] = DEFAULT_DEPTHS,
          n_steps: int = DEFAULT_STEPS, isolate: bool = False, progress: bool = True,
          out: str | os.PathLike | None = None, on_step: Callable[[dict], None] | None = None,
          **session_options) -> Trace:
    """Step time against context depth for each configuration; one trace with a `config` column.

    Every configuration is checked before the first one loads. With isolate=True each configuration runs in its
    own worker: one that crashes leaves its steps and events in the trace (meta['crashed']) and the sweep goes on;
    one whose engine dies while loading is listed in meta['failed']. on_step(row) is called after every step of
    every configuration (live dashboards)."""
    configs = [c if isinstance(c, SplitConfig) else SplitConfig.from_dict(c) for c in configs]
    model = Path(model) if model is not None else default_model()
    n_ctx_train = read_model_info(model).n_ctx_train
    configs, depths = _check_sweep(configs, depths, n_steps, n_ctx_train)
    if not isolate:  # devices are known once the engine is loaded: check them all before the first model loads
        devices = [d.spec() for d in Engine.acquire(resolve_engine(engine)).local_devices()]
        for config in configs:
            config.check_against(devices, n_ctx_train)
    bar = SweepProgress(len(configs) * len(depths) * n_steps, enabled=progress)
    pieces: list[Trace] = []
    failed: list[dict] = []
    workload = {"name": "sweep", "depths": list(depths), "n_steps": n_steps}
    try:
        for config in configs:
            bar.start_config(config.label)
            try:
                session = Session(model, config, engine=engine, isolate=isolate, **session_options)
            except EngineCrashedError as exc:
                bar.write(f"gpuscope sweep: configuration {config.label!r}: {exc}")
                failed.append({"config": config.label, "error": str(exc)})
                continue
            session.add_step_listener(bar.on_step)
            if on_step is not None:
                session.add_step_listener(on_step)
            try:
                session.run(sweep_loop, depths, n_steps)
            except EngineCrashedError as exc:
                bar.write(f"gpuscope sweep: configuration {config.label!r}: {exc}")
            finally:
                session.close()
            pieces.append(session.trace(workload=workload))
    finally:
        bar.close()
    if not pieces:
        raise EngineCrashedError("every configuration's engine died while loading: " +
                                 "; ".join(f"{f['config']}: {f['error']}" for f in failed))
    trace = combine_traces(pieces, {"source": "sweep", "workload": workload, "failed": failed})
    if out is not None:
        save_trace(trace, out)
    return trace


def _check_sweep(configs: list[SplitConfig], depths: Sequence[int], n_steps: int,
                 n_ctx_train: int | None) -> tuple[list[SplitConfig], list[int]]:
    """Validate the sweep before anything loads; a configuration without n_ctx gets the context it needs."""
    if not configs:
        raise SplitConfigError("a sweep needs at least one configuration")
    depths = sorted({int(d) for d in depths})
    if not depths or depths[0] < 0:
        raise SplitConfigError(f"depths must be non-negative token counts, got {depths}")
    if n_steps < 1:
        raise SplitConfigError(f"n_steps must be at least 1, got {n_steps}")
    needed = depths[-1] + n_steps
    if n_ctx_train and needed > n_ctx_train:
        raise SplitConfigError(f"depth {depths[-1]} plus {n_steps} steps needs {needed} tokens of context, more "
                               f"than the model's training context ({n_ctx_train})")
    sized = []
    for config in configs:
        if config.context_size(n_ctx_train) < needed:
            if config.n_ctx is not None:
                raise SplitConfigError(f"configuration {config.label!r} has n_ctx={config.n_ctx}, but depth "
                                       f"{depths[-1]} plus {n_steps} steps needs {needed}: raise n_ctx or lower "
                                       "the depths")
            config = config.replace(n_ctx=needed)
        sized.append(config)
    labels = [c.label for c in sized]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise SplitConfigError(f"configurations must have distinct labels, {', '.join(map(repr, repeated))} "
                               "repeats: give them a name=")
    return sized, depths


class SweepProgress:
    """A progress bar over the decode steps of a sweep (fill steps show as a status): configuration, depth, step."""

    def __init__(self, total: int, enabled: bool = True):
        self._bar = None
        if enabled:
            self._bar = tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True)
        self._label = ""

    def start_config(self, label: str) -> None:
        self._label = label
        if self._bar is not None:
            self._bar.set_description(f"{label}: loading")

    def on_step(self, row: dict) -> None:
        if self._bar is None:
            return
        depth = row.get("depth", "?")
        if row["phase"] == "fill":
            self._bar.set_description(f"{self._label}: filling to {depth} ({row['pos_after']})")
            return
        self._bar.set_description(f"{self._label}: depth {depth}")
        self._bar.set_postfix(ms=f"{row['wall_ns'] / 1e6:.2f}", refresh=False)
        self._bar.update(1)

    def write(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


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
