"""The kernel collector's parts that run without a GPU: Kineto parsing and clock alignment on REAL torch profiler
runs (CPU activity; skipped where torch, an optional extra, is not installed), the kernel families of ggml's real
CUDA kernels, the per-step joins, and the messages when GPU collection cannot run. The GPU path itself is checked on
a GPU machine (`gpuscope collect kernels`)."""
from __future__ import annotations

import re
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from gpuscope.analysis.kernels import (fa_kernels_by_route, fa_route_summary, family_time_per_step,
                                       gpu_busy_per_step)
from gpuscope.collectors.kernel_table import FAMILIES, base_name, classify, kernel_frame
from gpuscope.engine.source import pinned_source
from gpuscope.trace.model import Trace

from gpuscope.collectors.kernels import (KernelProfiler, cupti_conflict, gpu_backend, kineto_activities,
                                         read_kineto)

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch (the 'torch' extra) is not installed")


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """A real Kineto trace of torch CPU work: matmuls, each bracketed by CLOCK_MONOTONIC reads (the 'steps')."""
    path = tmp_path_factory.mktemp("kineto") / "kineto.json"
    x = torch.randn(192, 192)
    windows = []
    with KernelProfiler("cpu", keep_trace=path) as profiler:
        for step in range(12):
            begin = time.monotonic_ns()
            (x @ x).relu_()
            if step % 3 == 0:
                time.sleep(0.002)  # an idle gap inside some steps
            windows.append((step, begin, time.monotonic_ns()))
    steps = pd.DataFrame(windows, columns=["step", "t_begin_ns", "t_end_ns"])
    events, base = read_kineto(path)
    ops = kineto_activities(events, base, categories={"cpu_op": "kernel"}, device_prefix="CPU",
                            offset_ns=profiler.meta["clock"]["offset_ns"])
    return profiler, steps, ops


@needs_torch
def test_clock_alignment_puts_profiled_ops_inside_their_monotonic_brackets(cpu_run):
    profiler, steps, ops = cpu_run
    clock = profiler.meta["clock"]
    assert clock["markers"] == 16 and clock["consistent"], clock
    assert clock["residual_ns"] < 1_000_000, clock
    mm = ops[ops["name"] == "aten::mm"].reset_index(drop=True)
    assert len(mm) == len(steps)
    slack = clock["residual_ns"]
    for op, step in zip(mm.itertuples(), steps.itertuples()):
        assert step.t_begin_ns - slack <= op.ts_ns, (op, step)
        assert op.ts_ns + op.duration_ns <= step.t_end_ns + slack, (op, step)


@needs_torch
def test_kineto_records_become_the_kernels_table(cpu_run):
    profiler, _, ops = cpu_run
    raw = [e for e in profiler.events if e.get("cat") == "cpu_op" and e.get("ph") == "X"]
    assert len(ops) == len(raw)
    assert (ops["duration_ns"] >= 0).all() and ops["ts_ns"].is_monotonic_increasing
    assert set(ops["source"]) == {"torch-kineto"} and ops["device"].nunique() == 1  # CPU ops: the pid
    # the GPU categories alone: a CPU run has none
    assert profiler.kernels.empty and profiler.meta["activities"] == {}


@needs_torch
def test_gpu_busy_per_step_is_the_union_of_activity(cpu_run):
    _, steps, ops = cpu_run
    busy = gpu_busy_per_step(ops, steps)
    assert list(busy["step"]) == list(steps["step"])
    for row in busy.itertuples():
        step = steps.set_index("step").loc[row.step]
        begin, end = int(step.t_begin_ns), int(step.t_end_ns)
        mask = np.zeros(end - begin, bool)  # an independent union, one cell per nanosecond
        starts = ops["ts_ns"].to_numpy()
        mine = ops[(starts >= begin) & (starts <= end)]
        for op in mine.itertuples():
            mask[max(op.ts_ns, begin) - begin:min(op.ts_ns + op.duration_ns, end) - begin] = True
        assert row.busy_ns == int(mask.sum())
        assert row.idle_ns == (end - begin) - row.busy_ns
        assert row.n_activities == len(mine)
        assert 0 < row.busy_fraction <= 1
    sleepy = busy.set_index("step").loc[[s for s in steps["step"] if s % 3 == 0]]
    assert (sleepy["max_gap_ns"] >= 1_500_000).all(), "the 2 ms sleeps show as gaps"
    per_family = family_time_per_step(ops, steps)
    summed = per_family.groupby("step")["time_ns"].sum()
    assert (summed >= busy.set_index("step")["busy_ns"]).all(), "overlapping ops count twice in the sums"


def _cuda_kernel_names() -> list[str]:
    source = pinned_source() / "ggml" / "src" / "ggml-cuda"
    names = set()
    for path in list(source.glob("*.cu")) + list(source.glob("*.cuh")):
        names.update(re.findall(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(",
                                path.read_text(errors="replace")))
    return sorted(names)


def test_every_ggml_cuda_kernel_gets_a_family():
    names = _cuda_kernel_names()
    assert len(names) > 100
    families = classify(pd.Series(names))
    assert set(families["family"]) <= set(FAMILIES)
    by_name = dict(zip(names, families["family"]))
    for name in ("mul_mat_q", "mul_mat_vec_q", "mul_mat_f", "mul_mat_vec_f"):
        assert by_name[name] == "matmul"
    for name, kind in (("flash_attn_ext_vec", "vec"), ("flash_attn_tile", "tile"), ("flash_attn_ext_f16", "mma_f16")):
        row = classify(pd.Series([name])).iloc[0]
        assert (row["family"], row["fa_kind"]) == ("flash_attn", kind)
    assert classify(pd.Series(["flash_attn_combine_results"])).iloc[0]["fa_kind"] == "helper"
    assert by_name["rms_norm_f32"] == "norm" and by_name["rope_neox"] == "rope"
    assert by_name["soft_max_f32"] == "softmax" and by_name["k_set_rows"] == "copy"
    assert by_name["quantize_q8_1"] == "quantize" and by_name["k_bin_bcast"] == "elementwise"
    unclassified = [n for n, f in by_name.items() if f == "other"]
    assert len(unclassified) < 0.35 * len(names), unclassified  # training/convolution ops may stay "other"


def test_demangled_names_reduce_to_the_function():
    assert base_name("void mul_mat_vec_q<(ggml_type)12, 1, false>(void const*, void const*, float*, int)") == \
        "mul_mat_vec_q"
    assert base_name("void (anonymous namespace)::k_bin_bcast<&op_add, float, float, float>(float const*)") == \
        "k_bin_bcast"
    assert base_name("nvjet_hsh_64x8_64x16_4x1_v_bz_splitK_TNT") == "nvjet_hsh_64x8_64x16_4x1_v_bz_splitK_TNT"
    table = kernel_frame({"ts_ns": [5, 1], "duration_ns": [1, 1], "device": ["CUDA0"] * 2, "device_index": [0, 0],
                          "stream": [7, 7], "category": ["memcpy", "kernel"],
                          "name": ["Memcpy HtoD (Pageable -> Device)", "nvjet_hsh_64x8_64x16_4x1_v_bz_splitK_TNT"],
                          "source": "torch-kineto"})
    assert list(table["family"]) == ["matmul", "copy"]  # sorted by time; copies by their category


def test_fa_kernels_are_matched_to_the_plans_that_chose_them():
    names = {"vec": "void flash_attn_ext_vec<256, 1, (ggml_type)1, (ggml_type)1, false>(char const*)",
             "tile": "void flash_attn_tile<256, 256, 32, false>(char const*)",
             "mma_f16": "void flash_attn_ext_f16<256, 256, 1, 8, false, false>(char const*)"}
    launches = [(110, "vec"), (210, "vec"), (310, "mma_f16"), (410, "tile")]
    kernels = kernel_frame({"ts_ns": [t for t, _ in launches], "duration_ns": [5] * 4, "device": ["CUDA0"] * 4,
                            "device_index": [0] * 4, "stream": [7] * 4, "category": "kernel",
                            "name": [names[k] for _, k in launches], "source": "torch-kineto"})
    columns = list(Trace(meta={}).table("fa_plan").columns)
    plans = pd.DataFrame([dict.fromkeys(columns, 0) | {"seq": i, "ts_ns": ts, "device": "CUDA0", "kernel": kind,
                                                        "caller": caller, "tensor": "__fattn__-0"}
                          for i, (ts, kind, caller) in enumerate([(100, "vec", "compute"), (105, "vec", "supports_op"),
                                                                  (300, "mma_f16", "compute"),
                                                                  (400, "vec", "compute")])])
    matched = fa_kernels_by_route(kernels, plans)
    assert list(matched["launched_kind"]) == ["vec", "mma_f16", "tile"]
    assert list(matched["agrees"]) == [True, True, False]
    summary = fa_route_summary(matched, kernels).set_index("kernel")
    assert summary.loc["vec", "launched"] == ["flash_attn_ext_vec", "flash_attn_tile"]
    assert not summary.loc["vec", "all_agree"] and summary.loc["mma_f16", "all_agree"]
    # a plan made before the profiler ran (an unprofiled pass; the hooks do not record it again) matches nothing
    early = pd.concat([plans.iloc[[2]].assign(seq=9, ts_ns=20), plans], ignore_index=True)
    assert fa_kernels_by_route(kernels, early).iloc[0]["launched_kind"] == "vec"  # the wrong launch, unwindowed
    windowed = fa_kernels_by_route(kernels, early, profiled=[(90, 500)])
    assert list(windowed["seq"]) == [0, 2, 3]


def test_gpu_collection_says_what_is_missing():
    if torch is not None and torch.cuda.is_available():
        pytest.skip("this machine has a GPU for torch")
    with pytest.raises(Exception, match="CPU-only build|sees no GPU|needs torch"):
        gpu_backend()
    done = subprocess.run([sys.executable, "-m", "gpuscope.cli", "collect", "kernels", "-o", "/nonexistent/k.trace"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "GPU kernel collection needs" in done.stderr, done.stderr


@needs_torch
def test_a_cupti_client_injected_by_nsight_is_detected(monkeypatch):
    if getattr(torch.version, "hip", None):
        pytest.skip("ROCm: no CUPTI")
    monkeypatch.setenv("CUDA_INJECTION64_PATH", "/opt/nvidia/nsight-systems/target/libToolsInjection64.so")
    message = cupti_conflict()
    assert message is not None and "CUDA_INJECTION64_PATH" in message and "Nsight" in message
    monkeypatch.delenv("CUDA_INJECTION64_PATH")
    assert cupti_conflict() is None
