"""`gpuscope bench doctor`: the doctor calibrated against the fix. Scenario pairs on the CPU engine (a synthetic
tiny llama, one engine thread, two local RPC devices): a problem run and its fixed run, measured in interleaved
rounds; per scenario, whether its rule found the problem, the saving the rule predicted against the saving
measured, and every warning or critical on the clean and fixed runs (each one a false alarm).

Scenarios: clean decode; chat-like prefill-heavy requests; the KV cache on the host under a layer split over two
RPC devices, alone and as one sweep of both configurations; an eval callback capturing three layers (the capture
workload decodes the same steps without it, side by side; on the CPU it costs next to nothing, so the doctor must
stay quiet); speculation with a draft that never agrees (random weights) and with one that agrees well but costs
what the target costs (the target's own q8_0 copy), against the target decoding alone. Partial
offload and FlashAttention with no kernel need a GPU (the CPU backend has every FA kernel and no device to offload
layers to): with a CUDA build (`--engine cuda`) the GPU set runs instead, on a synthetic 1B: clean decode, chat-like
requests, 8 of 16 layers on the GPU against all of them, a head size with no FlashAttention kernel against FA off,
the KV cache on the host, an eval callback capturing three layers, speculation with a random draft.
"""
from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from gpuscope.analysis.facade import Analysis
from gpuscope.analysis.stats import bootstrap_median_difference
from gpuscope.doctor.findings import Finding
from gpuscope.doctor.rules import diagnose
from gpuscope.engine.build import Build
from gpuscope.models.synth import synth_model
from gpuscope.runs.rounds import interleaved
from gpuscope.runs.sweep import sweep
from gpuscope.runs.verify import paired_saving
from gpuscope.session.config import SplitConfig
from gpuscope.session.protocol import open_session
from gpuscope.session.workloads import capture_hidden_states, plain_loop, speculative
from gpuscope.trace.combine import combine
from gpuscope.trace.model import Trace, save_trace

CPU_SHAPE = "tiny"
GPU_SHAPE = "1b"  # 16 layers, 2048 wide, head size 64, f16: 2.5 GB
STEPS = 16
PROMPT = "The history of the printing press begins in"
NOT_ON_CPU = {"partial offload": "the CPU engine has no device to offload layers to",
              "FlashAttention with no kernel": "the CPU backend has a FlashAttention kernel for every head size"}


@dataclass
class Scenario:
    name: str
    rule: str | None                       # the rule that must find the problem (None: a clean run)
    problem: Callable[[int], Trace]        # round -> the problem run
    fix: Callable[[int], Trace] | None     # round -> the fixed run (None: nothing to fix, or the problem run
                                           # measures its own fix, as the capture workload does)
    measure: Callable[[list[Trace], list[Trace]], dict] | None = None  # (problem runs, fixed runs) -> saving


@dataclass
class Result:
    scenario: str
    rule: str | None
    found: Finding | None
    measured: dict | None                   # paired_saving's keys: saving_ms, ci_ms, before_ms, after_ms
    false_alarms: list[str] = field(default_factory=list)  # "problem run: rule (severity)" / "fixed run: ..."

    @property
    def predicted_ms(self) -> float | None:
        return self.found.saving_ns / 1e6 if self.found is not None and self.found.saving_ns is not None else None

    @property
    def within_target(self) -> bool | None:
        """Within 30% of the measured saving, or 3 points of the problem's step (the issue's target)."""
        if self.predicted_ms is None or not self.measured:
            return None
        measured, step = self.measured["saving_ms"], self.measured["before_ms"]
        return abs(self.predicted_ms - measured) <= max(0.30 * abs(measured), 0.03 * step)

    def to_dict(self) -> dict:
        return {"scenario": self.scenario, "rule": self.rule, "found": self.found is not None,
                "severity": self.found.severity if self.found else None, "predicted_ms": self.predicted_ms,
                "measured": self.measured, "within_target": self.within_target, "false_alarms": self.false_alarms}


@dataclass(frozen=True)
class Setting:
    """What a scenario runs on: the model, the engine build, every configuration's base settings, the depths."""

    model: Path
    build: Build
    base: dict
    depths: tuple[int, ...]

    def config(self, name: str, **settings) -> SplitConfig:
        return SplitConfig(name=name, **{**self.base, **settings})


CPU_BASE = {"n_threads": 1, "n_ctx": 2048}  # one engine thread: the 2-core machine keeps a core for the rest
GPU_BASE = {"n_gpu_layers": 99, "flash_attn": "on", "n_ctx": 8192}


def _sweep(setting: Setting, *configs: SplitConfig) -> Callable[[int], Trace]:
    return lambda round_index: sweep(list(configs), setting.model, engine=setting.build.root,
                                     depths=list(setting.depths), n_steps=STEPS, progress=False, seed=round_index)


def chat_requests(session, seed: int) -> None:
    """Four requests with a long prompt and a short answer each: mostly prefill, as chat traffic is."""
    for request in range(4):
        session.clear()
        session.fill(384 + 32 * request)
        for token in session.random_tokens(8, seed=seed + request):
            session.decode([token])


def _chat(setting: Setting) -> Callable[[int], Trace]:
    def run(round_index: int) -> Trace:
        with open_session(setting.model, setting.config("chat"), engine=setting.build.root) as session:
            session.run(chat_requests, round_index)
            return session.trace(workload={"name": "chat"})
    return run


def _capture(setting: Setting) -> Callable[[int], Trace]:
    def run(round_index: int) -> Trace:
        with open_session(setting.model, setting.config("eval callback"), engine=setting.build.root) as session:
            return capture_hidden_states(session, r"l_out-[012]$", depth=512, n_steps=STEPS, keep_data=False)[0]
    return run


def captured_saving(problem: list[Trace], _fix: list[Trace]) -> dict:
    """The capture workload's own side-by-side: the same steps without the callback and with it."""
    steps = pd.concat([trace.tables["steps"] for trace in problem], ignore_index=True)
    decode = steps[(steps["phase"] == "decode") & steps["capture"].notna()]
    plain = decode.loc[~decode["capture"].astype(bool), "wall_ns"].to_numpy(float) / 1e6
    capturing = decode.loc[decode["capture"].astype(bool), "wall_ns"].to_numpy(float) / 1e6
    difference, low, high = bootstrap_median_difference(plain, capturing)
    return {"saving_ms": difference, "ci_ms": [low, high], "before_ms": float(np.median(capturing)),
            "after_ms": float(np.median(plain))}


def _speculation(setting: Setting, draft: Path | None, n_tokens: int) -> Callable[[int], Trace]:
    def run(round_index: int) -> Trace:
        name = "target alone" if draft is None else f"draft {draft.stem}"
        with open_session(setting.model, setting.config(name), engine=setting.build.root,
                          draft_model=draft) as session:
            if draft is None:
                session.run(plain_loop, PROMPT, n_tokens)
                return session.trace(workload={"name": "plain"})
            return speculative(session, PROMPT, n_tokens=n_tokens, draft_max=4)
    return run


def per_token_saving(problem: list[Trace], fix: list[Trace]) -> dict:
    """Wall time per generated token: speculation's rounds (drafts, verify, the host's work between) against the
    target alone (begin to begin of its decode steps, the first left out)."""
    speculated = [float(((r["t_end_ns"] - r["t_begin_ns"]) / (r["accepted"] + 1)).mean()) / 1e6
                  for r in (trace.tables["spec_rounds"] for trace in problem)]
    alone = []
    for trace in fix:
        begins = trace.tables["steps"].query("phase == 'decode'")["t_begin_ns"].to_numpy(np.int64)[1:]
        alone.append(float(np.diff(begins).mean()) / 1e6)
    return {"saving_ms": float(np.mean(speculated) - np.mean(alone)), "ci_ms": None,
            "before_ms": float(np.mean(speculated)), "after_ms": float(np.mean(alone))}


def cpu_scenarios(build: Build, workdir: Path) -> list[Scenario]:
    cpu = Setting(synth_model(CPU_SHAPE), build, CPU_BASE, (0, 512, 1024))
    layers = cpu.config("kv with layers", devices=("rpc:0", "rpc:1"))
    host = cpu.config("kv on host", devices=("rpc:0", "rpc:1"), offload_kqv=False)
    q8_copy = workdir / "target-q8_0.gguf"
    subprocess.run([str(build.program("llama-quantize")), str(cpu.model), str(q8_copy), "Q8_0", "1"], check=True,
                   capture_output=True)
    random_draft = synth_model(CPU_SHAPE, seed=1)  # the target's shape, other random weights: agrees by chance
    return [
        Scenario("clean decode", None, _sweep(cpu, cpu.config("clean")), None),
        Scenario("chat-like prefill-heavy requests", None, _chat(cpu), None),
        Scenario("KV on the host under a layer split", "copies.cross-device", _sweep(cpu, host), _sweep(cpu, layers),
                 measure=paired_saving),
        Scenario("the same two configurations as one sweep", "config.slower", _sweep(cpu, layers, host),
                 _sweep(cpu, layers), measure=_slow_part(host.label, paired_saving)),
        # on the CPU the scheduler's waits for a callback are no-ops: the capture costs next to nothing, and the
        # doctor must say nothing more than it measured
        Scenario("an eval callback on three layers (CPU: no wait)", None, _capture(cpu), None,
                 measure=captured_saving),
        Scenario("speculation with a draft that never agrees", "speculation.net-effect",
                 _speculation(cpu, random_draft, 48), _speculation(cpu, None, 48), measure=per_token_saving),
        # the q8_0 copy agrees on most drafts but costs about what the target does: speculation loses all the same
        Scenario("speculation with the target's own q8_0 copy", "speculation.net-effect",
                 _speculation(cpu, q8_copy, 96), _speculation(cpu, None, 96), measure=per_token_saving),
    ]


def gpu_scenarios(build: Build, workdir: Path) -> list[Scenario]:
    gpu = Setting(synth_model(GPU_SHAPE), build, GPU_BASE, (0, 2048, 4096))
    # 32 heads of 48 (1536 wide): a head size with no FlashAttention kernel on sm_90 (the field notes: 14.7 ms per
    # step with FA on against 1.4 ms with it off)
    no_kernel = Setting(synth_model(f"{GPU_SHAPE},n_embd=1536"), build, GPU_BASE, gpu.depths)
    all_layers, partial = gpu.config("all layers"), gpu.config("8 of 16 layers", n_gpu_layers=8)
    random_draft = synth_model(f"{GPU_SHAPE},n_layer=2", seed=1)  # the target's vocabulary, random weights
    return [
        Scenario("clean decode", None, _sweep(gpu, gpu.config("clean")), None),
        Scenario("chat-like prefill-heavy requests", None, _chat(gpu), None),
        Scenario("partial offload, as one sweep with all layers", "config.slower", _sweep(gpu, all_layers, partial),
                 _sweep(gpu, all_layers), measure=_slow_part(partial.label, paired_saving)),
        Scenario("FlashAttention with no kernel (head size 48)", "fa.route-none",
                 _sweep(no_kernel, no_kernel.config("fa on")),
                 _sweep(no_kernel, no_kernel.config("fa off", flash_attn="off")), measure=paired_saving),
        Scenario("KV cache on the host", "copies.cross-device", _sweep(gpu, gpu.config("kv on host", offload_kqv=False)),
                 _sweep(gpu, gpu.config("kv on the GPU")), measure=paired_saving),
        Scenario("an eval callback capturing three layers", "sync.eval-callback", _capture(gpu), None,
                 measure=captured_saving),
        Scenario("speculation with a draft that never agrees", "speculation.net-effect",
                 _speculation(gpu, random_draft, 48), _speculation(gpu, None, 48), measure=per_token_saving),
    ]


def _slow_part(label: str, measure: Callable) -> Callable:
    """`measure` on the steps of one configuration of the problem's sweeps (the slow one, against the fix)."""
    def measured(problem: list[Trace], fix: list[Trace]) -> dict:
        return measure([Analysis(trace).of_config(label).trace for trace in problem], fix)
    return measured


def _alarms(findings: list[Finding], run: str) -> list[str]:
    return [f"{run}: {f.id} ({f.severity}, {f.config})" for f in findings if f.severity != "info"]


def run_scenario(scenario: Scenario, rounds: int, keep: Path | None = None) -> Result:
    arms = {"problem": scenario.problem} | ({"fix": scenario.fix} if scenario.fix else {})
    pieces = interleaved(arms, rounds, say=f"gpuscope bench doctor: {scenario.name}")
    problem = combine(pieces["problem"], {"source": "bench doctor", "scenario": scenario.name})
    findings = diagnose(Analysis(problem))
    found = next((f for f in findings if f.id == scenario.rule and f.severity != "info"), None)
    # a problem run may show the problem to several rules; a clean run shows nothing
    alarms = _alarms(findings, "clean run") if scenario.rule is None else []
    if scenario.fix is not None:
        fixed = combine(pieces["fix"], {"source": "bench doctor", "scenario": f"{scenario.name}, fixed"})
        alarms += _alarms(diagnose(Analysis(fixed)), "fixed run")
    measured = scenario.measure(pieces["problem"], pieces.get("fix", [])) if scenario.measure else None
    if keep is not None:
        name = re.sub(r"[^a-z0-9]+", "-", scenario.name.lower()).strip("-")
        save_trace(problem, keep / f"{name}.trace")
        if scenario.fix is not None:
            save_trace(fixed, keep / f"{name}-fixed.trace")
    return Result(scenario.name, scenario.rule, found, measured, alarms)


def run(build: Build, rounds: int, keep: Path | None = None) -> list[Result]:
    """Every scenario of the build's backend (CPU or GPU); `keep`: a folder to save each scenario's problem and
    fixed runs in, as traces."""
    make = cpu_scenarios if build.meta["backend"] == "cpu" else gpu_scenarios
    with tempfile.TemporaryDirectory(prefix="gpuscope-bench-doctor-") as folder:
        return [run_scenario(scenario, rounds, keep) for scenario in make(build, Path(folder))]
