"""Real traces for the analysis, doctor and compare tests: purpose-built runs of the hooked CPU engine, recorded
once per test process and shared by the modules that use them (pytest would otherwise run a fixture imported
into two modules twice). Each run takes a second or two on 2 cores with the tiny synthetic model.

Traces that need another machine or another build are committed under datasets/traces/ (see datasets/traces/README.md).
"""
from __future__ import annotations

import functools
import subprocess
import sys
import tempfile
from pathlib import Path

from gpuscope.engine.build import Build, BuildSpec, build_engine
from gpuscope.models.synth import synth_model
from gpuscope.session.rpc import LocalRpcServers
from gpuscope.trace.model import Trace, load_trace
from gpuscope.runs.record import record

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT / "datasets" / "traces"
TEST_PATCHES = ROOT / "native_hooks" / "test-patches"
THREADS = "1"  # one thread: no barrier for a busy machine to stall


@functools.cache
def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="gpuscope-analysis-tests-"))


@functools.cache
def engine() -> Build:
    """The hooked CPU build every engine test uses (built on first use, reused from the cache after)."""
    return build_engine(BuildSpec())


@functools.cache
def alternating_engine() -> Build:
    """The fork-like build whose graphs alternate two topologies (the hook tests build the same one)."""
    return build_engine(BuildSpec(name="test-alternate-topologies",
                                  patches=[TEST_PATCHES / "alternate-topologies.diff"]))


@functools.cache
def tiny_model(shape: str = "tiny") -> Path:
    return synth_model(shape)


def _record(name: str, command: list[str], **options) -> Trace:
    out = scratch() / f"{name}.trace"
    trace = record(command, out, quiet=True, stdout=subprocess.DEVNULL, **options)
    assert trace.meta["exit"]["returncode"] == 0, f"{name}: {trace.meta['exit']['how']}"
    return trace


@functools.cache
def bench(name: str = "bench", *extra: str) -> Trace:
    """llama-bench on the CPU: a 16-token prompt test and 64 single-token steps, twice."""
    command = [str(engine().program("llama-bench")), "-m", str(tiny_model()), "-p", "16", "-n", "64", "-r", "2",
               "-t", THREADS, *extra]
    return _record(name, command)


@functools.cache
def eval_callback() -> Trace:
    """llama-eval-callback: one prompt decoded with a callback that asks for every tensor."""
    return _record("eval-callback", [str(engine().program("llama-eval-callback")), "-m", str(tiny_model()),
                                     "-p", "hello world, the eval callback sees every tensor", "-n", "1",
                                     "-t", THREADS])


@functools.cache
def rpc(name: str, *extra: str, build: str = "default", shape: str = "tiny") -> Trace:
    """llama-bench with every layer on two local RPC servers (layer split) and the given options."""
    chosen = engine() if build == "default" else alternating_engine()
    servers = LocalRpcServers(chosen.program("ggml-rpc-server"), 2, threads=1).start()
    try:
        command = [str(chosen.program("llama-bench")), "-m", str(tiny_model(shape)),
                   "--rpc", ",".join(servers.endpoints),
                   "-ngl", "99", "-sm", "layer", "-p", "0", "-n", "24", "-r", "1", "-t", THREADS, *extra]
        return _record(name, command)
    finally:
        servers.finish()


_BATCH_SCRIPT = """
import sys
from gpuscope.session.config import SplitConfig
from gpuscope.session.session import Session
from gpuscope.trace.model import save_trace

model, engine, out, pattern, capacity = sys.argv[1:6]
session = Session(model, SplitConfig(devices=(), n_ctx=512, n_threads=1), engine=engine,
                  ring_capacity=int(capacity) or None)
tokens = session.random_tokens(256, seed=1)
session.decode(tokens[:8], phase="fill")
position = 8
for step in range(48):
    count = 1 + step % 2 if pattern == "alternating" else 1
    session.decode(tokens[position:position + count])
    position += count
session.close()
save_trace(session.trace(), out)
"""


@functools.cache
def batches(pattern: str, ring_capacity: int = 0) -> Trace:
    """A session decoding single tokens ('steady') or batches of one and two tokens in turn ('alternating'),
    in a process of its own (a process holds one engine build); a small ring capacity loses events."""
    out = scratch() / f"batches-{pattern}-{ring_capacity}.trace"
    done = subprocess.run([sys.executable, "-c", _BATCH_SCRIPT, str(tiny_model()), str(engine().root), str(out),
                           pattern, str(ring_capacity)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return load_trace(out)


@functools.cache
def stacks() -> Trace:
    """A session sweep on the CPU with py-spy sampling the engine's native stacks (gpuscope collect stacks)."""
    out = scratch() / "stacks.trace"
    done = subprocess.run([sys.executable, "-m", "gpuscope.cli", "collect", "stacks", "--out", str(out),
                           "--model", str(tiny_model("tiny,n_layer=16")), "--engine", str(engine().root),
                           "--config", "devices=cpu n_threads=1", "--depths", "0,128", "--steps", "128",
                           "--rate", "250"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return load_trace(out)


def dataset(name: str) -> Trace:
    return load_trace(DATASETS / f"{name}.trace")
