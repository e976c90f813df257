"""Record the CPU datasets of datasets/cpu/ on this machine: one clean sweep of the default model and one trace per
doctor problem, each made on purpose with a real engine run (README.md in this folder has the table).

    python datasets/record_cpu.py [NAME ...]        # all of them, or the named ones; about 3 minutes on 2 cores

Builds used (gpuscope engine build, cached): the hooked CPU build, `test-alternate-topologies` (the allocator
churn patch) and `test-markup-names` (a layer output named with markup, for the reports' escaping tests).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gpuscope.runs.collect import StackCollection
from gpuscope.engine.build import Build, BuildSpec, build_engine
from gpuscope.models import default_model, synth_model
from gpuscope.session.config import SplitConfig
from gpuscope.session.rpc import LocalRpcServers
from gpuscope.runs.sweep import sweep
from gpuscope.trace.model import load_trace
from gpuscope.runs.record import record

HERE = Path(__file__).resolve().parent
OUT = HERE / "cpu"
TEST_PATCHES = HERE.parent / "native_hooks" / "test-patches"
THREADS = "1"  # one engine thread: a 2-core machine keeps a core for the reader


def hooked() -> Build:
    return build_engine(BuildSpec())


def patched(name: str, *patches: str) -> Build:
    return build_engine(BuildSpec(name=name, patches=[TEST_PATCHES / p for p in patches]))


def bench_over_rpc(name: str, build: Build, *extra: str, shape: str = "tiny") -> None:
    """llama-bench with every layer on two local ggml-rpc-servers (layer split) and the given options."""
    servers = LocalRpcServers(build.program("ggml-rpc-server"), 2, threads=1).start()
    try:
        record([str(build.program("llama-bench")), "-m", str(synth_model(shape)), "--rpc", ",".join(servers.endpoints),
                "-ngl", "99", "-sm", "layer", "-p", "0", "-n", "24", "-r", "1", "-t", THREADS, *extra],
               OUT / f"{name}.trace", quiet=True, stdout=subprocess.DEVNULL)
    finally:
        servers.finish()


_SESSION_SCRIPT = """
import sys
from gpuscope.session.config import SplitConfig
from gpuscope.session.session import Session
from gpuscope.trace.model import save_trace

model, out, pattern, capacity = sys.argv[1:5]
session = Session(model, SplitConfig(devices=(), n_ctx=512, n_threads=1), ring_capacity=int(capacity) or None)
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


def session_batches(name: str, pattern: str, ring_capacity: int = 0) -> None:
    """A session decoding single tokens ('steady') or batches of one and two tokens in turn ('alternating'), in
    a process of its own; a tiny ring capacity loses events."""
    subprocess.run([sys.executable, "-c", _SESSION_SCRIPT, str(synth_model("tiny")), str(OUT / f"{name}.trace"),
                    pattern, str(ring_capacity)], check=True)


def clean_sweep() -> None:
    sweep([SplitConfig()], default_model(), depths=[0, 256, 512, 1024], n_steps=16, progress=False,
          out=OUT / "cpu-sweep-gemma3.trace")


def split_sweep() -> None:
    """The default model over a local and a two-RPC-device layer split, FlashAttention on and off."""
    sweep([SplitConfig(name="local"), SplitConfig(name="2 rpc, layer split", devices=("rpc:0", "rpc:1")),
           SplitConfig(name="local, FA off", flash_attn="off")],
          default_model(), depths=[0, 256, 512], n_steps=12, progress=False,
          out=OUT / "cpu-sweep-split-configs.trace")


def stacks_sweep() -> None:
    """The clean sweep's workload under py-spy (native stacks), the engine in a worker process."""
    sweep([SplitConfig()], default_model(), depths=(0, 256, 512), n_steps=16, isolate=True, progress=False,
          around=StackCollection(), out=OUT / "cpu-stacks-gemma3.trace")


RECIPES = {
    "cpu-sweep-gemma3": clean_sweep,
    "cpu-stacks-gemma3": stacks_sweep,
    "cpu-sweep-split-configs": split_sweep,
    "cpu-lost-events": lambda: session_batches("cpu-lost-events", "steady", ring_capacity=16),
    "cpu-graph-rebuilt": lambda: session_batches("cpu-graph-rebuilt", "alternating"),
    "cpu-allocator-churn": lambda: bench_over_rpc("cpu-allocator-churn",
                                                  patched("test-alternate-topologies", "alternate-topologies.diff")),
    "cpu-eval-callback-syncs": lambda: record(
        [str(hooked().program("llama-eval-callback")), "-m", str(synth_model("tiny")), "-p",
         "hello world, the eval callback sees every tensor", "-n", "1", "-t", THREADS],
        OUT / "cpu-eval-callback-syncs.trace", quiet=True, stdout=subprocess.DEVNULL),
    "cpu-kv-on-host-copies": lambda: bench_over_rpc("cpu-kv-on-host-copies", hooked(), "-nkvo", "1"),
    "cpu-ops-off-device": lambda: bench_over_rpc("cpu-ops-off-device", hooked(), "-ot", r"blk\.1\.ffn_.*=CPU"),
    "cpu-split-imbalance": lambda: bench_over_rpc("cpu-split-imbalance", hooked(), "-ts", "1/1", "-ot",
                                                  r"blk\.([89]|1[0-5])\.=CPU", shape="tiny,n_layer=16"),
    "cpu-markup-tensor-names": lambda: bench_over_rpc("cpu-markup-tensor-names",
                                                      patched("test-markup-names", "markup-tensor-name.diff")),
}


def main(names: list[str]) -> None:
    OUT.mkdir(exist_ok=True)
    for name in names or RECIPES:
        print(f"recording {name}", file=sys.stderr)
        RECIPES[name]()
        trace = load_trace(OUT / f"{name}.trace")
        size = sum(f.stat().st_size for f in (OUT / f"{name}.trace").rglob("*") if f.is_file())
        print(f"  {name}: {sum(len(t) for t in trace.tables.values())} rows, {size / 1e6:.2f} MB", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
