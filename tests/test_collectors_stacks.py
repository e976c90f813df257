"""py-spy on real engine processes: a session's worker decoding with the patched CPU engine, attributed to ggml
functions; and the failure modes (no permission to attach, a target that exits, py-spy missing)."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from gpuscope.analysis.cpu_stacks import folded, time_per_step
from gpuscope.collectors.stacks import CATEGORIES, StackSampler, attribute, py_spy_command
from gpuscope.runs.collect import StackCollection
from gpuscope.trace.steps import join_to_steps
from gpuscope.errors import AttachPermissionError, CollectorUnavailableError, TargetExitedError
from gpuscope.session import SplitConfig, open_session
from gpuscope.session.workloads import sweep_loop


pytest.importorskip("gpuscope.collectors.stacks")
PY_SPY = shutil.which("py-spy")
needs_py_spy = pytest.mark.skipif(PY_SPY is None, reason="py-spy is not installed (pip install py-spy)")


@pytest.fixture(scope="module")
def sampled(engine_build, gemma):
    """An isolated session (the engine in a worker process) decoding the real default model under py-spy."""
    session = open_session(gemma, SplitConfig(n_ctx=512), engine=engine_build, isolate=True)
    try:
        stacks, meta = StackCollection(rate=100).run(session, sweep_loop, [0, 256], 16)
        stacks = stacks.assign(in_step=join_to_steps(stacks, session.steps))  # as the sweep joins it
    finally:
        session.close()
    return stacks, meta, session.steps


@needs_py_spy
def test_samples_of_a_real_session_land_in_ggml_functions(sampled):
    stacks, meta, steps = sampled
    assert meta["clock"]["consistent"], meta["clock"]
    assert meta["clock"]["residual_ns"] < 100_000_000, meta["clock"]
    assert set(stacks["category"]) <= set(CATEGORIES)
    assert len(stacks) >= 20, "a second of decoding gives tens of samples"
    inside = stacks[stacks["in_step"].notna()]
    assert inside["duration_ns"].sum() >= 0.5 * stacks["duration_ns"].sum(), "most sampled time is in steps"
    per_category = inside.groupby("category")["duration_ns"].sum()
    assert per_category.get("cpu_kernel", 0) > 0.3 * per_category.sum(), per_category
    functions = set(inside.loc[inside["category"] == "cpu_kernel", "function"])
    assert any(f.startswith("ggml_compute_forward") or f.startswith("ggml_vec_") or "sgemm" in f or "tinyBLAS" in f
               for f in functions), functions
    assert stacks["stack"].str.contains("llama_decode", regex=False).any()
    # every decode step that lasted several sampling intervals got samples
    long_steps = steps[steps["wall_ns"] > 5 * meta["clock"]["median_sample_interval_ns"]]
    assert set(long_steps["step"]) <= set(inside["in_step"].astype(int))


@needs_py_spy
def test_per_step_time_and_folded_stacks_add_up(sampled):
    stacks, _, steps = sampled
    per_step = time_per_step(stacks, steps)
    assert len(per_step)
    windows = steps.set_index("step")["wall_ns"]
    total = per_step.groupby("step")["time_ns"].sum()
    assert (total <= windows.loc[total.index] + 1).all(), "clipped to the step window"
    assert (per_step["share"] <= 1.0 + 1e-9).all()
    flame = folded(stacks)
    assert flame["time_ns"].sum() == stacks["duration_ns"].sum()
    assert flame["samples"].sum() == stacks["samples"].sum()
    assert flame["time_ns"].is_monotonic_decreasing


def test_attribution_picks_the_frame_nearest_the_leaf():
    root = "0x7f;<module>;Session.decode;llama_decode;llama_context::decode;llama_context::graph_compute"
    assert attribute(root + ";ggml_graph_compute;ggml_compute_forward_mul_mat;ggml_vec_dot_q4_K_q8_K") == \
        ("cpu_kernel", "ggml_vec_dot_q4_K_q8_K")
    assert attribute(root + ";ggml_graph_compute;ggml_barrier") == ("wait", "ggml_barrier")
    assert attribute("<module>;llama_decode;llama_context::decode;llama_model::build_graph;ggml_new_tensor_impl")[0] \
        == "graph_build"
    assert attribute("<module>;llama_decode;ggml_backend_sched_alloc_graph;ggml_gallocr_alloc_graph")[0] == \
        "alloc_reserve"
    assert attribute("<module>;llama_decode;ggml_backend_sched_split_graph")[0] == "sched_split"
    assert attribute("<module>;llama_decode;llama_batch_allocr::init")[0] == "engine_other"
    assert attribute("<module>;RingReader.drain")[0] == "outside_engine"


@needs_py_spy
def test_no_permission_to_attach_is_reported():
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--user", "true"]).returncode != 0:
        pytest.skip("user namespaces are not available here to take ptrace permission away")
    target = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        # py-spy in a fresh user namespace has no capability over a process outside it: ptrace is refused
        with pytest.raises(AttachPermissionError, match="ptrace"):
            with StackSampler(target.pid, py_spy=["unshare", "--user", PY_SPY]):
                pass
    finally:
        target.kill()
        target.wait()


@needs_py_spy
def test_a_target_that_exits_is_reported():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with pytest.raises(TargetExitedError):
        with StackSampler(gone.pid):
            pass
    brief = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    try:
        with pytest.raises(TargetExitedError):
            with StackSampler(brief.pid, marker=lambda seconds: (0, 0)):
                brief.wait()
    finally:
        brief.wait()


@needs_py_spy
def test_sampling_is_placed_on_the_clock_where_tracers_do_not_show(monkeypatch):
    """Some sandboxes never show a tracer in /proc/PID/status (the CI machine saw none while py-spy took 621
    samples): the sampler then goes by py-spy's own 'Sampling process' line and runs longer markers."""
    from gpuscope.collectors import stacks as module

    seen = module._tracer_of
    monkeypatch.setattr(module, "_tracer_of", lambda pid: min(seen(pid), 0))
    with StackSampler(rate=100) as sampler:  # this process, as for an in-process session
        sum(range(3_000_000))
    assert sampler.meta["first_sample_unseen"]
    clock = sampler.meta["clock"]
    assert clock["markers"] == 2, clock
    # on a loaded machine py-spy's samples run late and two markers' bounds can miss each other (a fresh-clone run
    # saw 39 ms of drift): the offset then says so and its residual covers both markers
    assert clock["consistent"] or clock["residual_ns"] >= abs(clock["drift_ns"]) // 2, clock


def test_py_spy_missing_is_reported(tmp_path):
    with pytest.raises(CollectorUnavailableError, match="pip install py-spy"):
        with StackSampler(py_spy=str(tmp_path / "py-spy")):
            pass
    assert py_spy_command(["sudo", "-n", "py-spy"]) == ["sudo", "-n", "py-spy"]
