"""The doctor's calibration, kept honest: the H200 runs of `gpuscope bench doctor` (datasets/h200-bench-doctor/,
recorded by benchmarks/gpu/h200-doctor.sh) read as the README says with this doctor, and the CPU scenarios still run
and find what they are about (one round each here; the benchmark itself is not a test). About a minute."""
from __future__ import annotations

from pathlib import Path

import pytest

from gpuscope.analysis import Analysis
from gpuscope.bench.doctor import cpu_scenarios, run_scenario
from gpuscope.doctor.rules import diagnose

RUNS = Path(__file__).resolve().parent.parent / "datasets" / "h200-bench-doctor"


def _serious(name: str) -> dict:
    return {f.id: f for f in diagnose(Analysis(RUNS / f"{name}.trace")) if f.severity != "info"}


@pytest.mark.parametrize("name, rules", [
    ("partial-offload-as-one-sweep-with-all-layers", {"config.slower", "placement.partial-offload"}),
    ("flashattention-with-no-kernel-head-size-48", {"fa.route-none"}),
    ("kv-cache-on-the-host", {"copies.cross-device"}),
    ("an-eval-callback-capturing-three-layers", {"sync.eval-callback"}),
    ("speculation-with-a-draft-that-never-agrees", {"speculation.net-effect"}),
])
def test_each_h200_problem_gets_its_findings_alone(name, rules) -> None:
    assert set(_serious(name)) == rules
    if (RUNS / f"{name}-fixed.trace").exists():  # the eval callback's fix is in its own trace's plain steps
        assert not _serious(f"{name}-fixed")


def test_the_h200_clean_runs_get_no_warnings() -> None:
    assert not _serious("clean-decode") and not _serious("chat-like-prefill-heavy-requests")


def test_symptoms_fold_into_their_cause() -> None:
    """The FA fallback's copies (attention sent to the CPU, K/V copied there every step) are the fallback's."""
    fallback = _serious("flashattention-with-no-kernel-head-size-48")["fa.route-none"]
    assert fallback.evidence["copies_of_the_fallback"]["copies_per_step"] > 0
    assert fallback.remedy == {"flash_attn": "off"}


def test_a_draft_is_no_configuration_to_rank() -> None:
    analysis = Analysis(RUNS / "speculation-with-a-draft-that-never-agrees.trace")
    assert set(analysis.steps["role"]) == {"target", "draft"}
    assert len(set(analysis.config_table["config"])) == 1


MEASURED_MS = 18.8  # what offloading every layer saved per decode step, in the same rounds (README)


def test_partial_offload_names_the_layers_to_move() -> None:
    findings = _serious("partial-offload-as-one-sweep-with-all-layers")
    slower, partial = findings["config.slower"], findings["placement.partial-offload"]
    assert slower.config == partial.config == "8 of 16 layers" and slower.remedy == {"n_gpu_layers": 99}
    assert slower.saving_ns / 1e6 == pytest.approx(MEASURED_MS, rel=0.05)
    # the rule on the slow configuration's steps alone, without the fast one beside it
    assert partial.evidence["n_gpu_layers"] == 8 and partial.remedy == {"n_gpu_layers": -1}
    assert partial.saving_ns / 1e6 == pytest.approx(MEASURED_MS, rel=0.30)


@pytest.fixture(scope="module")
def cpu_runs(engine_build, tmp_path_factory):
    chosen = {"clean decode", "KV on the host under a layer split", "speculation with a draft that never agrees"}
    scenarios = [s for s in cpu_scenarios(engine_build, tmp_path_factory.mktemp("bench-doctor")) if s.name in chosen]
    return {s.name: run_scenario(s, rounds=1) for s in scenarios}


def test_cpu_scenarios_find_their_problems_and_stay_quiet_on_clean_runs(cpu_runs) -> None:
    assert not cpu_runs["clean decode"].false_alarms
    for name in ("KV on the host under a layer split", "speculation with a draft that never agrees"):
        result = cpu_runs[name]
        assert result.found is not None, name
        assert result.measured["saving_ms"] > 0 and result.predicted_ms > 0, result.to_dict()
        assert not result.false_alarms, result.false_alarms
