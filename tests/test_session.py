"""Real engine sessions on the CPU: in-process and isolated, local RPC devices, and the three workloads.

Everything runs the hooked CPU build on real models: the tiny synthetic model where the model does not matter,
the default model (Gemma 3 270M) where it does (a real tokenizer, draft confidence, step times worth comparing).
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gpuscope.errors import DecodeError, EngineCrashedError, SplitConfigError
from gpuscope.session import Session, SplitConfig, capture_hidden_states, speculative
from gpuscope.session.protocol import open_session
from gpuscope.trace.model import load_trace

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def abort_in_decode(session) -> None:
    """Runs inside an isolated session's worker: a batch one token larger than n_batch, given straight to
    llama_decode, trips the engine's GGML_ASSERT(n_tokens_all <= cparams.n_batch) and aborts the process."""
    context = session.context()
    count = context.n_batch + 1
    batch = context.llama.llama_batch_init(count, 0, 1)
    batch.n_tokens = count
    for i in range(count):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = 1, context.position + i, 1, 0
        batch.seq_id[i][0] = 0
    context.llama.llama_decode(context.handle, batch)


def _decode_steps(trace, config=None):
    steps = trace.tables["steps"]
    steps = steps[steps["phase"] == "decode"]
    return steps if config is None else steps[steps["config"] == config]


# ---- in-process, the default model ----------------------------------------------------------------------------------

def test_default_model_decodes_in_process_while_the_ring_is_read_live(engine_build, gemma, tmp_path):
    config = SplitConfig(n_ctx=256, n_threads=2)
    with Session(gemma, config, engine=engine_build) as session:
        live = session.ring
        prompt = session.tokenize("The capital of France is")
        session.decode(prompt, phase="prefill")
        first = live.read_all()
        assert len(first["decode_begin"]) == 1 and first["decode_begin"]["n_tokens"].iloc[0] == len(prompt)
        assert (first["buffer"]["owner"] == "weights").any() and (first["buffer"]["owner"] == "kv").any()
        for _ in range(4):
            session.decode([session.argmax()])
        second = live.read_all()  # only what happened since the last read
        assert list(second["decode_begin"]["pos_min"]) == [len(prompt) + i for i in range(4)]
        assert live.status.state == "alive" and live.status.lost == 0
        with pytest.raises(DecodeError, match="overflow the context"):
            session.decode([1] * 250)
    trace = session.trace()
    steps = trace.tables["steps"]
    assert list(steps["phase"]) == ["prefill"] + ["decode"] * 4
    assert list(steps["pos_after"]) == [len(prompt) + i for i in range(5)]
    assert (steps["pos_before"].iloc[1:].to_numpy() == steps["pos_after"].iloc[:-1].to_numpy()).all()
    assert (steps["n_decode_begin"] == 1).all() and (steps["engine_ns"] <= steps["wall_ns"]).all()
    assert list(trace.tables["decode_begin"]["in_step"]) == list(steps["step"])
    assert trace.meta["model"]["synthetic"] is False and trace.meta["model"]["architecture"] == "gemma3"
    saved = load_trace(session.save(tmp_path / "session.trace"))
    assert SplitConfig.from_dict(saved.meta["configs"][0]) == config
    assert saved.meta["ring"]["state"] in ("alive", "closed") and len(saved.tables["steps"]) == 5


def test_reported_plans_are_reported_again_after_forget(engine_build, tiny_model):
    """Op placements (like FA plans) are reported once per ring; a kernel profiler's window asks for them again."""
    config = SplitConfig(devices=["rpc:0"], n_gpu_layers=3, n_ctx=128, n_threads=2)
    with Session(tiny_model, config, engine=engine_build) as session:
        live = session.ring

        def placements_of(batches):
            for batch in batches:  # batch sizes change: every step rebuilds its graph and places its ops anew
                session.decode([1] * batch)
            return live.read_all().get("op_placement", pd.DataFrame(columns=["tensor"]))

        first = placements_of([4, 1])
        assert len(first) > 0
        assert len(placements_of([2, 1])) == 0  # the same ops on the same backends: already reported
        assert session.engine.ggml.forget_reported_plans()
        again = placements_of([2, 1])
        assert len(again) > 0 and set(again["tensor"]) <= set(first["tensor"])


def test_invalid_configurations_fail_before_a_model_loads(engine_build, tiny_model):
    with pytest.raises(SplitConfigError, match="unknown device 'Vulkan0': this engine build sees CPU"):
        Session(tiny_model, SplitConfig(devices=["Vulkan0"]), engine=engine_build)
    with pytest.raises(SplitConfigError, match=r"n_ctx=4096 is larger than the model's training context \(2048\)"):
        Session(tiny_model, SplitConfig(n_ctx=4096), engine=engine_build)
    with pytest.raises(SplitConfigError, match="rpc:0, rpc:1 cannot"):
        Session(tiny_model, SplitConfig(devices=["rpc:0", "rpc:1"], split_mode="row"), engine=engine_build)


# ---- the sweep, from the command line -------------------------------------------------------------------------------

@pytest.mark.parametrize("isolate", [False, True], ids=["in-process", "isolated"])
def test_sweep_cli_over_local_and_two_rpc_devices_writes_one_trace(engine_build, tiny_model, tmp_path, isolate):
    out = tmp_path / "sweep.trace"
    depths, steps_per_depth = [0, 64, 160], 6
    command = [sys.executable, "-m", "gpuscope.cli", "sweep", "--engine", str(engine_build.root),
               "--model", str(tiny_model), "--config", "n_threads=1",
               "--config", "devices=rpc:0,rpc:1 split_mode=layer n_threads=1",
               "--depths", ",".join(map(str, depths)), "--steps", str(steps_per_depth), "--out", str(out),
               *(["--isolate"] if isolate else [])]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == str(out)
    assert "rpc0+rpc1 layer" in done.stdout and "depth 160" in done.stderr  # summary table, progress bar

    trace = load_trace(out)
    assert trace.meta["model"]["synthetic"] is True and trace.meta["crashed"] is False
    labels = [config["label"] for config in trace.meta["configs"]]
    assert labels == ["auto t1", "rpc0+rpc1 layer t1"]
    for label in labels:  # a decode row for every step at every depth, positions continuing from the depth
        decode = _decode_steps(trace, label)
        assert decode.groupby("depth").size().to_dict() == {d: steps_per_depth for d in depths}
        for depth, rows in decode.groupby("depth"):
            assert list(rows["pos_before"]) == list(range(depth, depth + steps_per_depth))
        assert (decode["n_decode_begin"] == 1).all()
    assert trace.tables["steps"]["step"].is_unique  # renumbered across configurations

    buffers = trace.tables["buffer"]
    allocs = buffers[(buffers["action"] == "alloc") & (buffers["config"] == labels[1])]
    main = allocs[allocs["process"] == "main"]
    assert {"CPU", "RPC0", "RPC1"} <= set(main["device"]), main[["device", "buft", "owner"]]
    for device in ("RPC0", "RPC1"):  # weights and KV cache of the offloaded layers on each RPC device
        assert {"weights", "kv"} <= set(main.loc[main["device"] == device, "owner"])
    assert {"rpc0", "rpc1"} <= set(allocs["process"])  # the servers' own buffers, from their own rings
    local_allocs = buffers[(buffers["action"] == "alloc") & (buffers["config"] == labels[0])]
    assert set(local_allocs["device"]) == {"CPU"} and set(local_allocs["process"]) == {"main"}

    rpc_run = trace.meta["runs"][1]
    assert rpc_run["processes"]["rpc0"]["exit"]["stopped_by_session"] is True
    assert [SplitConfig.from_dict(config).label for config in trace.meta["configs"]] == labels
    copies = trace.tables["copy"]
    assert (copies.loc[copies["config"] == labels[1], "mode"] == "blocking").any()  # RPC has no async copy


# ---- speculative decoding, hidden-state capture ---------------------------------------------------------------------

def test_speculative_loop_records_acceptance_and_graph_rebuilds(engine_build, gemma):
    with Session(gemma, SplitConfig(n_ctx=512, n_threads=2), engine=engine_build, draft_model=gemma) as session:
        trace = speculative(session, n_tokens=40, draft_max=4, p_min=0.5)
    rounds = trace.tables["spec_rounds"]
    workload = trace.meta["workload"]
    assert len(rounds) == workload["rounds"] > 0
    assert (rounds["accepted"] <= rounds["drafted"]).all() and workload["drafted"] > 0
    assert workload["acceptance_rate"] == pytest.approx(rounds["accepted"].sum() / rounds["drafted"].sum())
    # the target resumes right after what it kept: the rejected suffix left both caches
    assert (rounds["position"].diff().dropna() == (rounds["accepted"] + 1).iloc[:-1].to_numpy()).all()
    steps = trace.tables["steps"]
    verify = steps[steps["phase"] == "verify"].reset_index(drop=True)
    assert list(verify["n_tokens"]) == list(rounds["verify_tokens"]) and verify["n_tokens"].nunique() > 1
    # a verify batch of another length than the target's previous batch cannot reuse its graph
    target = steps[steps["role"] == "target"].reset_index(drop=True)
    changed = target[target["n_tokens"] != target["n_tokens"].shift()]
    assert not changed["graph_reused"].any()
    assert target["graph_reused"].any()  # while equal lengths do
    ubatches = trace.tables["ubatch"]
    assert (ubatches["graph_reused"] == 0).sum() >= len(changed)


def test_capture_costs_one_sync_per_captured_tensor_per_step(engine_build, tiny_model):
    with Session(tiny_model, SplitConfig(n_ctx=256, n_threads=1), engine=engine_build) as session:
        trace, records = capture_hidden_states(session, r"l_out-(1|3)", depth=40, n_steps=5)
    steps = trace.tables["steps"]
    capturing = steps[(steps["phase"] == "decode") & (steps["capture"] == True)]  # noqa: E712
    plain = steps[(steps["phase"] == "decode") & (steps["capture"] == False)]  # noqa: E712
    assert len(capturing) == len(plain) == 5
    syncs = trace.tables["sync"]
    callback_syncs = syncs[syncs["reason"] == "eval_callback"]
    per_step = callback_syncs.groupby("in_step").agg(n=("seq", "size"), needed=("n_needed", "max"))
    for step in capturing["step"]:
        # two captured tensors: two views end on a wanted node, plus the rest of the graph (one split on a CPU)
        assert per_step.loc[step, "needed"] == 2 and per_step.loc[step, "n"] == 3
    assert not callback_syncs["in_step"].isin(plain["step"]).any()
    captures = trace.tables["captures"]
    assert captures.groupby("step").size().to_dict() == {step: 2 for step in capturing["step"]}
    assert sorted(set(captures["name"])) == ["l_out-1", "l_out-3"]
    assert all(r["data"].shape == (256,) and r["data"].dtype == np.float32 and np.isfinite(r["data"]).all()
               for r in records)
    assert trace.meta["workload"]["tensors_per_step"] == 2.0


# ---- isolation ------------------------------------------------------------------------------------------------------

def test_a_worker_whose_engine_aborts_leaves_the_parent_a_crashed_trace(engine_build, tiny_model, monkeypatch):
    monkeypatch.setenv("GGML_NO_BACKTRACE", "1")  # ggml would otherwise attach gdb to print a backtrace
    session = open_session(tiny_model, SplitConfig(n_ctx=256, n_batch=32, n_ubatch=32, n_threads=1),
                      engine=engine_build, isolate=True)
    session.fill(40)
    for token in session.random_tokens(3):
        session.decode([token])
    assert session.position() == 43
    with pytest.raises(EngineCrashedError, match="killed by SIGABRT during run"):
        session.run(abort_in_decode)
    with pytest.raises(EngineCrashedError, match="worker is gone"):
        session.decode([1])
    trace = session.trace()
    session.close()
    assert trace.meta["crashed"] is True and trace.meta["exit"]["signal"] == signal.SIGABRT
    assert trace.meta["ring"]["state"] == "crashed" and trace.meta["ring"]["crash_signal"] == signal.SIGABRT
    assert len(trace.tables["steps"]) == 5  # two fill batches and three decodes, all before the crash
    begun = trace.tables["decode_begin"]
    assert len(begun) == 6 and begun["in_step"].isna().sum() == 1  # the aborted decode began, never ended
    assert not Path(trace.meta["ring"]["path"]).exists()


def test_rpc_servers_die_with_the_process_that_started_them(engine_build, tiny_model, tmp_path):
    script = textwrap.dedent(f"""
        import json, sys, time
        from gpuscope.session import Session, SplitConfig
        session = Session({str(tiny_model)!r}, SplitConfig(devices=["rpc:0", "rpc:1"], n_ctx=128),
                          engine={str(engine_build.root)!r})
        print(json.dumps(session.processes()), flush=True)
        time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        processes = json.loads(child.stdout.readline())
    finally:
        child.kill()  # SIGKILL: no atexit, no close
        child.wait()
    servers = [processes[name]["pid"] for name in ("rpc0", "rpc1")]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(pid) for pid in servers):
        time.sleep(0.1)
    assert not any(_running(pid) for pid in servers)
    for process in processes.values():  # a killed process cannot clean up its rings: this test does
        Path(process["ring"]).unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ---- step times against llama-bench ----------------------------------------------------------------------------------

def test_step_times_agree_with_llama_bench_tg_at_the_same_depth(engine_build, gemma):
    """Interleaved rounds (bench, session, bench, ...) so that machine drift hits both alike; the session's
    tokens/s must fall inside llama-bench's own spread, widened by 15%."""
    depth, n_gen, rounds, threads = 128, 24, 3, 1
    bench = [str(engine_build.program("llama-bench")), "-m", str(gemma), "-p", "0", "-n", str(n_gen),
             "-d", str(depth), "-r", "1", "-t", str(threads), "-o", "json"]
    bench_rates, session_rates = [], []
    with Session(gemma, SplitConfig(n_ctx=depth + n_gen, n_threads=threads), engine=engine_build) as session:
        for round_index in range(rounds):
            done = subprocess.run(bench, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-2000:]
            bench_rates.append(float(json.loads(done.stdout)[0]["avg_ts"]))
            session.clear()
            session.fill(depth)
            with session.tagged(round=round_index):
                for token in session.random_tokens(n_gen, seed=round_index):
                    session.decode([token])
        steps = session.steps
    decode = steps[steps["phase"] == "decode"]
    session_rates = [1e9 / rows["wall_ns"].mean() for _, rows in decode.groupby("round")]
    low, high = min(bench_rates) / 1.15, max(bench_rates) * 1.15
    assert low <= float(np.median(session_rates)) <= high, (bench_rates, session_rates)
