"""The hooks on real runs of the engine's own programs: every event kind the CPU build can produce, with payloads.

The session fixture builds the hooked CPU engine once (or reuses it from the cache: $GPUSCOPE_CACHE); the
allocator test builds a second engine with a test patch. Each run writes its events into its own ring file
(GPUSCOPE_RING) and the test reads it back with the ring reader.
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from gpuscope.engine.build import Build, BuildSpec, build_engine
from gpuscope.ring.reader import RingReader

TEST_PATCHES = Path(__file__).resolve().parent.parent / "native_hooks" / "test-patches"
THREADS = "2"


@pytest.fixture(scope="session")
def engine() -> Build:
    return build_engine(BuildSpec())


@pytest.fixture(scope="session")
def alternating_engine() -> Build:
    """A fork-like engine whose scheduler alternates two graph topologies (a test patch)."""
    return build_engine(BuildSpec(name="test-alternate-topologies",
                                  patches=[TEST_PATCHES / "alternate-topologies.diff"]))


class Run:
    def __init__(self, tables: dict[str, pd.DataFrame], status, output: str) -> None:
        self.tables = tables
        self.status = status
        self.output = output

    def __getitem__(self, kind: str) -> pd.DataFrame:
        assert kind in self.tables, f"no {kind} event in the run (kinds: {sorted(self.tables)})\n{self.output[-2000:]}"
        return self.tables[kind]


def run_recorded(program: Path, args: list[str], ring: Path, timeout: float = 300) -> Run:
    env = {**os.environ, "GPUSCOPE_RING": str(ring)}
    done = subprocess.run([str(program), *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{program.name} failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return read_ring(ring, done.stdout + done.stderr)


def read_ring(ring: Path, output: str = "") -> Run:
    with RingReader(ring) as reader:
        tables = reader.read_all()
        return Run(tables, reader.status, output)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RpcServer:
    """A ggml-rpc-server of the build on loopback, with its own ring."""

    def __init__(self, engine: Build, ring: Path) -> None:
        self.port = free_port()
        self.ring = ring
        self.process = subprocess.Popen(
            [str(engine.program("ggml-rpc-server")), "-H", "127.0.0.1", "-p", str(self.port), "-t", "1"],
            env={**os.environ, "GPUSCOPE_RING": str(ring)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.stderr.read().decode()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError(f"ggml-rpc-server did not listen on port {self.port}")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def test_bench_steps_buffers_splits_and_syncs(engine: Build, tiny_model: Path, tmp_path: Path) -> None:
    run = run_recorded(engine.program("llama-bench"),
                       ["-m", str(tiny_model), "-p", "32", "-n", "8", "-r", "1", "-t", THREADS], tmp_path / "bench.ring")
    assert run.status.state == "closed" and run.status.lost == 0

    info = run["device_info"]
    assert list(info["name"]) == ["CPU"] and (info["memory_total"] > 0).all() and (info["backend"] == "CPU").all()

    buffers = run["buffer"]
    allocs = buffers[buffers["action"] == "alloc"]
    weights = allocs[allocs["owner"] == "weights"]
    # the model is mmap'd: its weights are a host-pointer buffer, not memory the engine allocated
    assert len(weights) == 1 and weights["from_host_ptr"].all() and weights["buft"].iloc[0] == "CPU_Mapped"
    assert 0.9 * tiny_model.stat().st_size < weights["size"].iloc[0] <= tiny_model.stat().st_size
    for owner in ("kv", "compute", "output"):
        owned = allocs[allocs["owner"] == owner]
        assert len(owned) >= 1 and (owned["size"] > 0).all() and (owned["device"] == "CPU").all(), owner
        assert not owned["from_host_ptr"].any()
    assert (allocs[allocs["owner"] == "compute"]["buft"] == "CPU").all()
    usage = buffers[buffers["action"] == "usage"]
    assert set(usage["owner"]) >= {"weights", "compute"}
    # every buffer allocated is freed by the time the program exits
    frees = buffers[buffers["action"] == "free"]
    for address, group in allocs.groupby("buffer"):
        assert (frees["buffer"] == address).sum() >= len(group)

    begins, ubatches = run["decode_begin"], run["ubatch"]
    submitted, synced = run["decode_submitted"], run["decode_synced"]
    assert list(begins["step"]) == list(submitted["step"]) == list(synced["step"])
    assert (submitted["status"] == 0).all()
    assert (synced["duration_ns"].to_numpy() >= submitted["duration_ns"].to_numpy()).all()
    prompt = begins[begins["n_tokens"] == 32]
    assert len(prompt) >= 1 and (prompt["pos_min"] == 0).all() and (prompt["pos_max"] == 31).all()
    decode = begins[begins["n_tokens"] == 1]
    assert len(decode) >= 8 and (decode["n_seqs"] == 1).all()
    assert set(ubatches["step"]) == set(begins["step"]) and (ubatches["index"] == 0).all()
    assert (ubatches["n_nodes"] > 0).all() and (ubatches["n_kv"] >= 256).all()
    # steady single-token decoding reuses the graph of the step before
    assert ubatches[ubatches["n_tokens"] == 1]["graph_reused"].sum() >= 6

    starts, ends = run["split_begin"], run["split_end"]
    assert len(starts) == len(ends) == len(ubatches)  # one split per graph on a CPU-only build
    assert (starts["backend"] == "CPU").all() and (starts["split_id"] == 0).all()
    assert (ends["duration_ns"] > 0).all()

    syncs = run["sync"]
    assert {"user", "realloc", "async_fallback"} <= set(syncs["reason"])
    assert (syncs["what"] == "backend").all() and (syncs["backend"] == "CPU").all()

    reserves = run["sched_reserve"]
    assert set(reserves["trigger"]) == {"explicit"} and (reserves["n_nodes"] > 0).all()
    gallocr = run["gallocr_buffer"]
    assert (gallocr["new_size"] > gallocr["old_size"]).all() and (gallocr["buft"] == "CPU").all()


def test_varying_batches_rebuild_the_graph(engine: Build, tiny_model: Path, tmp_path: Path) -> None:
    run = run_recorded(engine.program("llama-batched-bench"),
                       ["-m", str(tiny_model), "-c", "512", "-b", "64", "-ub", "64", "-npp", "16,32", "-ntg", "4",
                        "-npl", "1,2", "-t", THREADS], tmp_path / "batched.ring")
    ubatches = run["ubatch"].sort_values("step")
    changed = ubatches["n_tokens"].ne(ubatches["n_tokens"].shift())
    # a ubatch of another size than the one before never reuses its graph; equal steady steps do
    assert not ubatches[changed]["graph_reused"].any()
    assert ubatches[~changed]["graph_reused"].sum() >= 8
    begins = run["decode_begin"]
    two_sequences = begins[(begins["n_tokens"] == 2)]
    assert len(two_sequences) >= 4 and (two_sequences["n_seqs"] == 2).all()
    # positions held in the KV cache grow by one per sequence and step
    assert (two_sequences["kv_used"] == 2 * two_sequences["pos_min"]).all()


def test_eval_callback_costs_one_sync_per_requested_node(engine: Build, tiny_model: Path, tmp_path: Path) -> None:
    run = run_recorded(engine.program("llama-eval-callback"),
                       ["-m", str(tiny_model), "-p", "hello world", "-n", "1", "-t", THREADS], tmp_path / "eval.ring")
    split = run["split_begin"]
    assert len(split) == 1
    n_nodes = int(split["n_nodes"].iloc[0])
    syncs = run["sync"]
    eval_syncs = syncs[syncs["reason"] == "eval_callback"]
    # llama-eval-callback asks for every tensor: every node is its own graph view and costs a sync
    assert len(eval_syncs) == n_nodes
    assert list(eval_syncs["n_views"]) == list(range(1, n_nodes + 1))
    assert (eval_syncs["n_needed"] == eval_syncs["n_views"]).all()
    assert (eval_syncs["split_id"] == 0).all()


def test_two_rpc_devices_buffers_copies_and_placement(engine: Build, tiny_model: Path, tmp_path: Path) -> None:
    servers = [RpcServer(engine, tmp_path / f"server{i}.ring") for i in range(2)]
    try:
        run = run_recorded(engine.program("llama-bench"),
                           ["-m", str(tiny_model), "--rpc", ",".join(s.endpoint for s in servers), "-ngl", "99",
                            "-sm", "layer", "-p", "16", "-n", "4", "-r", "1", "-t", THREADS], tmp_path / "rpc.ring")
        # partial offload to one device: a layer's output add is pulled onto the device of the next layer
        partial = run_recorded(engine.program("llama-bench"),
                               ["-m", str(tiny_model), "--rpc", servers[0].endpoint, "-ngl", "3", "-p", "16", "-n", "2",
                                "-r", "1", "-t", THREADS], tmp_path / "partial.ring")
    finally:
        for server in servers:
            server.stop()

    info = run["device_info"].set_index("name")
    assert {"RPC0", "RPC1", "CPU"} <= set(info.index)
    assert info.loc["RPC0", "backend"] == "RPC" and info.loc["RPC0", "description"] == servers[0].endpoint

    allocs = run["buffer"][run["buffer"]["action"] == "alloc"]
    for device in ("RPC0", "RPC1"):
        on_device = allocs[allocs["device"] == device]
        assert {"weights", "compute"} <= set(on_device["owner"]), device
        assert not on_device["is_host"].any()
    # the layer split puts more weight bytes on the first device than on the second (3 + 2 of 5 blocks)
    weight_bytes = allocs[allocs["owner"] == "weights"].groupby("device")["size"].sum()
    assert weight_bytes["RPC0"] > weight_bytes["RPC1"] > 0

    copies = run["copy"]
    routes = copies["src_device"].astype(str) + "->" + copies["dst_device"].astype(str)
    crossing = copies[copies["src_device"].astype(str) != copies["dst_device"].astype(str)]
    assert len(crossing) > 0 and (crossing["bytes"] > 0).all()
    assert {"CPU->RPC0", "RPC0->RPC1"} <= set(routes)
    # RPC backends have no async copy: inputs between devices take the blocking fallback
    assert set(copies["mode"]) <= {"blocking", "user_input"} and "blocking" in set(copies["mode"])
    assert (copies["split_id"] >= 0).all()
    syncs = run["sync"]
    in_splits = set(syncs[syncs["split_id"] >= 0]["reason"])
    assert "input_copy" in in_splits and in_splits <= {"input_copy", "split_boundary"}
    # two RPC devices (async, events) turn pipeline parallelism on: splits wait on events instead of syncing
    assert {"backend", "event", "event_wait"} <= set(syncs["what"])

    for i in range(2):
        served = read_ring(tmp_path / f"server{i}.ring")
        server_allocs = served["buffer"][served["buffer"]["action"] == "alloc"]
        assert len(server_allocs) >= 2 and (server_allocs["device"] == "CPU").all()

    placement = partial["op_placement"]
    assert len(placement) >= 1
    assert (placement["layer_backend"] == "CPU").all() and placement["backend"].str.startswith("RPC0").all()
    assert (placement["layer"] >= 0).all()
    assert all(name.endswith(f"-{layer}") for name, layer in zip(placement["tensor"], placement["layer"]))


def test_tensor_split_parts_and_allreduces_inside_the_meta_backend(engine: Build, tiny_model: Path,
                                                                   tmp_path: Path) -> None:
    """`-sm tensor` runs one scheduler split on the meta backend; its per-device work is recorded inside it."""
    servers = [RpcServer(engine, tmp_path / f"server{i}.ring") for i in range(2)]
    try:
        run = run_recorded(engine.program("llama-bench"),
                           ["-m", str(tiny_model), "--rpc", ",".join(s.endpoint for s in servers), "-ngl", "99",
                            "-sm", "tensor", "-fa", "1", "-p", "0", "-n", "4", "-r", "1", "-t", THREADS],
                           tmp_path / "tensor.ring")
    finally:
        for server in servers:
            server.stop()

    assert run["split_begin"]["backend"].astype(str).str.startswith("Meta(").any()
    parts = run["meta_part"]
    devices = parts["device"].astype(str)
    assert set(devices) == {"RPC0", "RPC1"}
    assert (devices == "RPC0").sum() == (devices == "RPC1").sum()  # every subgraph goes to both devices
    assert (parts["n_nodes"] > 0).all() and (parts["subgraph"] < parts["n_subgraphs"]).all()
    assert (parts["n_subgraphs"] > 1).all()  # a llama layer needs at least one all-reduce

    copies = run["copy"]
    # RPC devices have no collective: every all-reduce takes the generic path, partial sums pushed both ways
    assert "allreduce" not in set(copies["mode"].astype(str))
    pushes = copies[copies["mode"].astype(str) == "reduce_step"]
    routes = set(pushes["src_device"].astype(str) + "->" + pushes["dst_device"].astype(str))
    assert routes == {"RPC0->RPC1", "RPC1->RPC0"}
    assert (pushes["bytes"] > 0).all()
    # one all-reduce between consecutive subgraphs of every graph the meta backend computed
    computes = parts[parts["subgraph"] == 0]
    boundaries = int((computes["n_subgraphs"] - 1).sum()) // 2
    assert len(pushes) == 2 * boundaries


def test_alternating_topologies_reallocate_with_their_reason(alternating_engine: Build, tiny_model: Path,
                                                             tmp_path: Path) -> None:
    server = RpcServer(alternating_engine, tmp_path / "server.ring")
    try:
        run = run_recorded(alternating_engine.program("llama-bench"),
                           ["-m", str(tiny_model), "--rpc", server.endpoint, "-ngl", "99", "-p", "16", "-n", "8",
                            "-r", "1", "-t", THREADS], tmp_path / "alternate.ring")
    finally:
        server.stop()
    reallocs = run["gallocr_realloc"]
    assert set(reallocs["reason"]) == {"n_nodes"}
    counts = list(zip(reallocs["old_count"], reallocs["new_count"]))
    assert all(new == old + 1 or new == old - 1 for old, new in counts)
    # the same allocator flips between two node counts, step after step
    flips = reallocs.groupby("galloc").size()
    assert flips.max() >= 6
    assert not run["ubatch"]["graph_reused"].any()
    # with two backends the allocator cannot re-plan alone: the scheduler syncs every backend and re-reserves
    reserves = run["sched_reserve"]
    failed = reserves[reserves["trigger"] == "alloc_failed"]
    assert len(failed) >= 6 and not failed["backend_ids_changed"].any() and (failed["reserve_ns"] > 0).all()
    assert (run["sync"]["reason"] == "realloc").sum() >= 2 * len(failed)


def test_no_ring_no_file(engine: Build, tiny_model: Path, tmp_path: Path) -> None:
    before = set(Path("/dev/shm").glob("gpuscope-*.ring"))
    env = {k: v for k, v in os.environ.items() if k != "GPUSCOPE_RING"}
    done = subprocess.run([str(engine.program("llama-bench")), "-m", str(tiny_model), "-p", "8", "-n", "2", "-r", "1",
                           "-t", THREADS], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0
    assert set(Path("/dev/shm").glob("gpuscope-*.ring")) == before
