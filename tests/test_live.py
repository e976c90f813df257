"""The live dashboard over a real engine: a session of the default model decoding in a background thread, Pause and
Stop at step boundaries, and a ring of another process (llama-bench) followed until its writer exits. The widgets
run without a frontend here; tests/test_notebooks.py and tests/test_browser.py show them in kernels and a browser.
About 30 s."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from gpuscope.live import live
from gpuscope.live.dashboard import MEDIAN
from gpuscope.ring.reader import RingReader
from gpuscope.session import Session, SplitConfig
from gpuscope.session.workloads import sweep_loop
from gpuscope.trace.ringtap import ring_dir


@pytest.fixture(scope="module")
def session(engine_build, gemma):
    with Session(gemma, SplitConfig(n_ctx=1024), engine=engine_build) as opened:
        yield opened


def wait_until(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_dashboard_draws_a_sweep_while_it_runs(session) -> None:
    dash = live(session, show=False, interval_s=0.05, findings_every_s=0.2)
    dash.run(sweep_loop, [0, 64, 128, 256], 16)
    assert dash.running
    dash.wait()
    steps = session.steps
    decode = steps[(steps["phase"] == "decode") & (steps["t_begin_ns"] >= dash.started_ns)]
    assert len(decode) == 64
    # it drew while the workload ran, not only at the end
    assert dash.refreshes_with_new_steps >= 3
    points = {t.name: list(zip(t.x, t.y)) for t in dash.step_figure.data if t.mode == "markers"}
    assert list(points) == [session.label]
    assert sorted(points[session.label]) == sorted(zip(decode["pos_after"], decode["wall_ns"] / 1e6))
    median = next(t for t in dash.step_figure.data if t.name == session.label + MEDIAN)
    assert len(median.y) == len(decode) and min(median.y) >= decode["wall_ns"].min() / 1e6
    assert dash.progress.value == dash.progress.max == 64 and "done" in dash.status.value
    # memory held now, per device and owner, includes what the model loaded before the dashboard opened
    held = {t.name: dict(zip(t.x, t.y)) for t in dash.memory_figure.data}
    assert held["kv"]["CPU"] > 0 and held["weights (mapped file)"]["CPU"] > 200  # MiB: the mapped GGUF
    assert f"syncs <b>{dash.events.counts['sync']}</b>" in dash.counters.value
    assert "lost events <b" in dash.counters.value and "Findings" in dash.findings_html.value


def test_pause_holds_the_workload_between_steps_and_stop_ends_it(session) -> None:
    dash = live(session, show=False, interval_s=0.05)
    dash.run(sweep_loop, [0, 128, 256, 512], 40)
    wait_until(lambda: len(dash.rows) >= 5)
    dash.pause()
    time.sleep(0.3)  # the step in flight finishes, then the workload waits
    held_at = len(dash.rows)
    time.sleep(0.5)
    assert len(dash.rows) == held_at and dash.running and "paused" in dash.status.value
    dash.resume()
    wait_until(lambda: len(dash.rows) > held_at)
    dash.stop()
    assert dash.wait() is None
    stopped_at = len(dash.rows)
    assert stopped_at < 4 * 40 and "stopped" in dash.status.value
    # the engine is left between two steps: the session decodes on, and its trace holds every step
    position = session.position()
    session.decode([session.argmax()])
    assert session.position() == position + 1 and len(dash.rows) == stopped_at + 1
    assert session.trace().tables["steps"]["status"].eq(0).all()


def test_dashboard_follows_another_process_ring_until_it_exits(engine_build, tiny_model) -> None:
    ring = ring_dir() / f"gpuscope-test-live-{uuid.uuid4().hex[:8]}.ring"
    dash = live(str(ring), show=False, interval_s=0.05)  # before the program exists: it waits for the ring
    assert "waiting" in dash.counters.value or dash.refreshes == 0
    bench = subprocess.Popen([str(engine_build.program("llama-bench")), "-m", str(tiny_model), "-p", "0",
                              "-n", "64", "-r", "3", "-t", "1"], env={**os.environ, "GPUSCOPE_RING": str(ring)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert bench.wait(120) == 0
        dash.wait(timeout=60)
        with RingReader(ring) as reader:
            tables = reader.read_all()
        steps = len(tables["decode_synced"])
        drawn = sum(len(t.x) for t in dash.step_figure.data if t.mode == "markers")
        assert drawn == steps >= 3 * 64
        assert f"steps <b>{len(tables['decode_begin'])}</b>" in dash.counters.value
        assert "ring closed" in dash.counters.value and "done" in dash.status.value
    finally:
        bench.kill()
        ring.unlink(missing_ok=True)


def test_bench_live_prints_both_conditions(engine_build, gemma) -> None:
    """`gpuscope bench live` in a real kernel (small: one round of each condition)."""
    done = subprocess.run([sys.executable, "-m", "gpuscope.cli", "bench", "live", "--engine", str(engine_build.root),
                           "--depths", "0,64", "--steps", "6", "--rounds", "1", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["steps"] == {"plain": 12, "dashboard": 12}
    low, high = result["difference_ci_ms"]
    assert low <= result["difference_ms"] <= high and result["refreshes"] >= 2
    assert all(ms > 0 for ms in result["median_ms"].values())


SWEEP_WITH_A_BUSY_MACHINE = """
import json, subprocess, sys
from gpuscope.live import live
from gpuscope.session import SplitConfig
configs = [SplitConfig(n_ctx=256, flash_attn="on"), SplitConfig(n_ctx=256, flash_attn="off")]
spinning = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
try:
    dash = live(show=False, interval_s=0.05)
    dash.sweep(configs, sys.argv[1], depths=(0, 64), n_steps=48, engine=sys.argv[2])
    dash.wait()
finally:
    for process in spinning:
        process.kill()
        process.wait()
print(json.dumps({"labels": [c.label for c in configs], "memory": dash.memory_html.value,
                  "noise": dash.noise_html.value, "title": dash.memory_figure.layout.title.text,
                  "bars_mib": sum(sum(t.y) for t in dash.memory_figure.data)}))
"""


def test_a_finished_sweep_keeps_each_configuration_s_memory_and_a_busy_machine_is_said(engine_build, tiny_model):
    """Two configurations swept with busy processes beside them on this machine's cores, in a process of their own
    (no other session holds memory there): once the sweep's sessions have freed everything, the last and peak
    memory of each stay, the figure keeps the last bars, and the noise of the steps is said."""
    done = subprocess.run([sys.executable, "-c", SWEEP_WITH_A_BUSY_MACHINE, str(tiny_model), str(engine_build.root)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    shown = json.loads(done.stdout.strip().splitlines()[-1])
    for label in shown["labels"]:
        assert f"<td>{label}</td>" in shown["memory"]
    assert "peak" in shown["memory"] and "MiB" in shown["memory"]
    assert shown["title"].startswith("Memory last held") and shown["bars_mib"] > 0
    assert "step times are noisy" in shown["noise"] and "machine looks busy" in shown["noise"]
