"""The committed CPU datasets still say what datasets/README.md says they show (each was made for one problem), and
every dataset opens, analyses and reports without an engine, and reads the same without the files its run used.
About 90 s."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpuscope.analysis import Analysis
from gpuscope.doctor.rules import diagnose
from gpuscope.plots import standard_figures

DATASETS = Path(__file__).resolve().parent.parent / "datasets"

# trace -> the doctor's findings (id: severity), exactly; measurement.noisy where the recording's steps scatter as
# this shared 2-core machine made them (the clean sweeps stay below its thresholds)
NOISY = {"measurement.noisy": "info"}
EXPECTED = {
    "cpu-sweep-gemma3": {},
    "cpu-stacks-gemma3": {},
    "cpu-sweep-split-configs": {"memory.split-imbalance": "warning", **NOISY},
    "cpu-lost-events": {"trace.lost-events": "critical"},
    "cpu-graph-rebuilt": {"graph.rebuilt": "warning"},
    "cpu-allocator-churn": {"allocator.churn": "warning", "graph.rebuilt": "warning", **NOISY},
    "cpu-eval-callback-syncs": {"sync.eval-callback": "warning"},
    "cpu-kv-on-host-copies": {"copies.cross-device": "critical", **NOISY},
    "cpu-ops-off-device": {"placement.off-device": "info"},
    "cpu-split-imbalance": {"memory.split-imbalance": "warning", "copies.cross-device": "critical",
                            "placement.off-device": "info", **NOISY},
    "cpu-markup-tensor-names": NOISY,
}


# two H200s: the doctor finds the placement made on purpose (-nkvo) and nothing in the plain splits
EXPECTED_TWO_GPUS = {
    "x2-sm-none": {}, "x2-sm-layer-ts1-1": {}, "x2-sm-layer-ts3-1": {}, "x2-sm-layer-ts1-1-pp-off": {},
    "x2-sm-tensor": {}, "x2-kernels-layer": {},
    "x2-kernels-tensor": NOISY,  # 6 of its 30 profiled steps took over 2x their neighbours (up to 5x)
    "x2-sm-layer-nkvo": {"copies.cross-device": "critical"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_TWO_GPUS))
def test_two_gpu_dataset_findings(name) -> None:
    findings = {f.id: f.severity for f in diagnose(Analysis(DATASETS / "h200x2-splits" / f"{name}.trace"))}
    assert findings == EXPECTED_TWO_GPUS[name]


def test_two_gpu_layer_split_places_weights_as_asked() -> None:
    """-ts 3/1 puts about three quarters of the weights on the first GPU, and both GPUs hold their layers' KV."""
    analysis = Analysis(DATASETS / "h200x2-splits" / "x2-sm-layer-ts3-1.trace")
    share = analysis.split_imbalance.set_index("location")["share"]
    assert share["CUDA0"] == pytest.approx(0.75, abs=0.03) and share["CUDA1"] == pytest.approx(0.25, abs=0.03)
    placed = analysis.memory_placement
    kv = placed[placed["owner"] == "kv"].groupby("location")["bytes"].sum()
    assert kv["CUDA0"] > 3 * kv["CUDA1"] * 0.9 and kv["CUDA1"] > 0


def test_two_gpu_tensor_split_work_inside_the_meta_backend() -> None:
    """The meta backend's hooks: every decode step sends each layer's parts to both GPUs and all-reduces them
    through NCCL; the doctor counts those all-reduces as the split's price, not as a placement problem."""
    analysis = Analysis(DATASETS / "h200x2-splits" / "x2-sm-tensor.trace")
    decode = analysis.complete_steps.loc[analysis.complete_steps["n_tokens"] == 1, "step"]
    parts = analysis.meta_parts[analysis.meta_parts["step"].isin(decode)]
    per_device = parts.groupby("device")["parts"].median()
    assert set(per_device.index) == {"CUDA0", "CUDA1"} and per_device["CUDA0"] == per_device["CUDA1"] == 65
    copies = analysis.copies[analysis.copies["step"].isin(decode)]
    assert (copies["collective_copies"] == 2 * 64).all()  # 32 layers x (attention, FFN) x 2 GPUs
    assert (copies["layers_copied"] == 0).all()
    pairs = set(zip(analysis.copy_pairs["src_device"], analysis.copy_pairs["dst_device"]))
    assert {("CUDA0", "CUDA1"), ("CUDA1", "CUDA0")} <= pairs


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cpu_dataset_shows_its_problem(name) -> None:
    findings = {f.id: f.severity for f in diagnose(Analysis(DATASETS / "cpu" / f"{name}.trace"))}
    assert findings == EXPECTED[name]


def test_every_dataset_is_listed_and_small() -> None:
    readme = (DATASETS / "README.md").read_text()
    traces = sorted(DATASETS.glob("*/*.trace"))
    assert {t.stem for t in DATASETS.glob("cpu/*.trace")} == set(EXPECTED)
    for trace in traces:
        assert f"`{trace.stem}`" in readme or f"`{trace.name}`" in readme, trace
        assert sum(f.stat().st_size for f in trace.rglob("*") if f.is_file()) < 5_000_000, trace


@pytest.mark.parametrize("name", ["cpu/cpu-sweep-split-configs", "h100-fa-routes/d160-fa1",
                                  "traces/cpu-abort-mid-decode"])
def test_datasets_open_without_an_engine(name) -> None:
    analysis = Analysis(DATASETS / f"{name}.trace")
    figures = standard_figures(analysis)
    assert len(analysis.steps) and "step_time_vs_context" in figures


_FINDINGS_OF_EVERY_DATASET = """
import json, sys
from pathlib import Path
from gpuscope.analysis import Analysis
from gpuscope.doctor.rules import diagnose
root = Path(sys.argv[1])
print(json.dumps({str(t.relative_to(root)): {f.id: [f.severity, f.statement] for f in diagnose(Analysis(t))}
                  for t in sorted(root.glob("*/*.trace"))}))
"""


def test_every_dataset_reads_the_same_on_a_machine_without_its_files(tmp_path) -> None:
    """Traces stand alone: with another HOME and an empty cache (no model, no engine source) every dataset gets the
    findings it gets here, word for word, and nothing is fetched into the cache."""
    def findings_with(env: dict) -> dict:
        done = subprocess.run([sys.executable, "-c", _FINDINGS_OF_EVERY_DATASET, str(DATASETS)], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    (tmp_path / "home").mkdir()
    (tmp_path / "cache").mkdir()
    elsewhere = findings_with({**os.environ, "HOME": str(tmp_path / "home"), "GPUSCOPE_CACHE": str(tmp_path / "cache")})
    here = findings_with(dict(os.environ))
    assert elsewhere == here
    assert not any((tmp_path / "cache").iterdir())
    assert len(here) == len(list(DATASETS.glob("*/*.trace")))
