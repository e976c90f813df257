"""Verifying the doctor: re-run a trace's workload with a finding's first remedy applied, in rounds interleaved
with the configuration as it was recorded, and measure what the remedy saves per decode step.

What can be re-run:
  - a sweep of gpuscope's sessions (`gpuscope sweep`, `gpuscope.runs.sweep`, the notebooks' and dashboard's
    sweeps): each arm is a sweep of one configuration, the recorded one or the remedied one, over the same depths;
  - a program recorded with `gpuscope record` that takes llama.cpp's common arguments (llama-bench, llama-cli,
    llama-server, llama-speculative...): each arm runs the command, as recorded or with the flag changed.
A remedy that is no configuration change (a steady batch shape, an eval callback removed, drafting off) is said to
be none, with the `gpuscope ab` command that would test it.

The saving is the mean over depths of the difference of median decode step times, before minus after, with a 95%
bootstrap interval (gpuscope.analysis.stats.stratified_saving), both arms measured in the same rounds.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from gpuscope.analysis.facade import Analysis
from gpuscope.analysis.stats import stratified_saving
from gpuscope.analysis.verdict import decode_steps, depths
from gpuscope.doctor.findings import Finding
from gpuscope.errors import GpuscopeError
from gpuscope.runs.record import record
from gpuscope.runs.rounds import interleaved
from gpuscope.runs.sweep import sweep
from gpuscope.session.config import SplitConfig
from gpuscope.trace.model import Trace

DEFAULT_ROUNDS = 3


class VerifyError(GpuscopeError):
    """A trace's workload cannot be re-run, or a verification run failed."""


def remedy_label(remedy: dict) -> str:
    return " ".join(f"{key}={value}" for key, value in sorted(remedy.items()))


@dataclass
class Workload:
    """How to run one configuration of a trace's workload again: `run(settings, round) -> Trace`."""

    describe: str
    run: Callable[[dict, int], Trace]
    settings: Callable[[str | None], dict]  # the recorded settings of a configuration label


def workload_of(trace: Trace, *, model: str | os.PathLike | None = None) -> Workload:
    """What re-runs `trace`'s workload; a VerifyError says why it cannot be."""
    meta = trace.meta
    if (meta.get("workload") or {}).get("name") == "sweep" and meta.get("configs"):
        return _sweep_workload(meta, model)
    if meta.get("command"):
        return _command_workload(meta)
    raise VerifyError(f"the trace's workload cannot be re-run: it was made by {meta.get('source', 'an unknown maker')!r}"
                      ", not by a gpuscope sweep or `gpuscope record`")


def _sweep_workload(meta: dict, model: str | os.PathLike | None) -> Workload:
    model = Path(model) if model is not None else Path(str((meta.get("model") or {}).get("path", "")))
    if not model.is_file():
        raise VerifyError(f"the model file {model} is gone: pass the model the run used (--model PATH)")
    engine = meta.get("engine") or {}
    # the recorded build's folder where it is still there, else the build of that name on this machine
    root = engine.get("root")
    build = root if root and Path(root).is_dir() else engine.get("name")
    workload = meta["workload"]
    by_label = {str(c["label"]): {k: v for k, v in c.items() if k not in ("label", "name")}
                for c in meta["configs"]}

    def settings(label: str | None) -> dict:
        if label not in by_label:
            if len(by_label) != 1:
                raise VerifyError(f"the trace records no configuration {label!r}")
            label = next(iter(by_label))
        return by_label[label]

    def run(config: dict, round_index: int) -> Trace:
        trace = sweep([SplitConfig.from_dict(config)], model, engine=build,
                      depths=workload["depths"], n_steps=int(workload["n_steps"]), isolate=True, progress=False,
                      seed=round_index)
        if trace.meta.get("crashed"):
            raise VerifyError(f"the engine crashed in the run of {SplitConfig.from_dict(config).label!r}")
        return trace

    return Workload(describe=f"sweeps of depths {workload['depths']} with {workload['n_steps']} steps each",
                    run=run, settings=settings)


# llama.cpp's common arguments for the settings remedies change; llama-bench takes 0/1 where the others take words
_BENCH = "llama-bench"


def command_with(command: list[str], settings: dict) -> list[str]:
    """`command` with the flags for `settings` (SplitConfig's keys) set, replaced or removed."""
    program = Path(command[0]).name
    words = list(command)
    bench = program == _BENCH

    def put(flags: tuple[str, ...], value: str | None) -> None:
        for index, word in enumerate(words):
            if word in flags:
                takes_value = value is not None or index + 1 < len(words) and not words[index + 1].startswith("-")
                del words[index:index + (2 if takes_value else 1)]
                break
        if value is not None:
            words.extend([flags[0], value])

    for key, value in settings.items():
        if key == "flash_attn":
            put(("-fa", "--flash-attn"), {"on": "1", "off": "0"}.get(value, value) if bench else str(value))
        elif key == "n_gpu_layers":
            put(("-ngl", "--gpu-layers", "--n-gpu-layers"), str(999 if int(value) < 0 else value))
        elif key == "offload_kqv":
            if bench:
                put(("-nkvo", "--no-kv-offload"), "0" if value else "1")
            else:
                put(("-nkvo", "--no-kv-offload"), None)
                if not value:
                    words.append("-nkvo")
        elif key in ("type_k", "type_v"):
            put(("-ctk", "--cache-type-k") if key == "type_k" else ("-ctv", "--cache-type-v"), str(value))
        elif key == "split_mode":
            put(("-sm", "--split-mode"), str(value))
        elif key == "tensor_split":
            put(("-ts", "--tensor-split"), ("/" if bench else ",").join(f"{float(v):g}" for v in value))
        else:
            raise VerifyError(f"{program} takes no flag for {key}: its remedy cannot be applied to the command")
    return words


def _command_workload(meta: dict) -> Workload:
    command = [str(word) for word in meta["command"]]
    if not Path(command[0]).is_file():
        raise VerifyError(f"the recorded program {command[0]} is gone: it cannot be re-run")

    def run(settings: dict, round_index: int) -> Trace:
        with tempfile.TemporaryDirectory(prefix="gpuscope-verify-") as folder:
            trace = record(command_with(command, settings), Path(folder) / "run.trace", quiet=True,
                           stdout=subprocess.DEVNULL)
        if trace.meta["exit"]["returncode"] != 0:
            raise VerifyError(f"`{shlex.join(command_with(command, settings))}` {trace.meta['exit']['how']}")
        return trace

    return Workload(describe=f"`{shlex.join(command)}`", run=run, settings=lambda label: {})


def decode_ms(traces: list[Trace]) -> pd.DataFrame:
    """Every decode step of the runs: stratum (its depth) and value (ms)."""
    frames = []
    for trace in traces:
        steps = decode_steps(Analysis(trace).steps)
        frames.append(pd.DataFrame({"stratum": depths(steps["context"]).to_numpy(),
                                    "value": steps["wall_ns"].to_numpy(float) / 1e6}))
    return pd.concat(frames, ignore_index=True)


def paired_saving(before: list[Trace], after: list[Trace]) -> dict:
    """What the `after` runs save per decode step against the `before` runs: saving_ms with its 95% interval
    (ci_ms), the step times of both (before_ms, after_ms: means over depths of the medians), the depths both
    measured and their steps."""
    first, second = decode_ms(before), decode_ms(after)
    if not len(first) or not len(second):
        raise VerifyError("the runs decoded no single-token steps to compare")
    saving, low, high = stratified_saving(first, second)
    shared = sorted(set(first["stratum"]) & set(second["stratum"]))
    return {"saving_ms": saving, "ci_ms": [low, high],
            "before_ms": float(first.groupby("stratum")["value"].median()[shared].mean()),
            "after_ms": float(second.groupby("stratum")["value"].median()[shared].mean()),
            "depths": [int(d) for d in shared], "steps": {"before": len(first), "after": len(second)}}


def measure_remedy(workload: Workload, config: str | None, remedy: dict, rounds: int) -> dict:
    """The remedy's measured saving: what `Finding.verified` holds."""
    before = workload.settings(config)
    after = {**before, **remedy}
    pieces = interleaved({"as recorded": lambda r: workload.run(before, r),
                          remedy_label(remedy): lambda r: workload.run(after, r)}, rounds, say="gpuscope verify")
    return {"remedy": remedy, "remedy_label": remedy_label(remedy), "rounds": rounds,
            **paired_saving(pieces["as recorded"], pieces[remedy_label(remedy)]), "workload": workload.describe}


def verify(analysis: Analysis, findings: list[Finding], *, rounds: int = DEFAULT_ROUNDS,
           model: str | os.PathLike | None = None) -> list[Finding]:
    """Measure each finding's first remedy where it is a configuration change (`Finding.remedy`) and attach the
    result as `Finding.verified`; findings sharing a remedy share its measurement. Nothing is raised for a remedy
    that cannot be measured: its `verified` says why, and the finding stays as the doctor made it."""
    if rounds < 1:
        raise VerifyError(f"--rounds must be at least 1, got {rounds}")
    try:
        workload = workload_of(analysis.trace, model=model)
    except VerifyError as exc:
        workload, unavailable = None, str(exc)
    measured: dict[tuple, dict] = {}
    for finding in findings:
        if finding.remedy is None:
            if finding.severity != "info":
                finding.verified = {"saving_ms": None, "reason": "its first action is no configuration change; "
                                    "measure it with `gpuscope ab --a BEFORE --b AFTER` on two builds, or two runs"}
            continue
        if workload is None:
            finding.verified = {"saving_ms": None, "reason": unavailable}
            continue
        key = (finding.config, remedy_label(finding.remedy))
        if key not in measured:
            try:
                measured[key] = measure_remedy(workload, finding.config, finding.remedy, rounds)
            except (GpuscopeError, ValueError) as exc:
                measured[key] = {"saving_ms": None, "reason": f"the verification run failed: {exc}"}
        finding.verified = measured[key]
    return findings
