"""The verdict across configurations, tested against measurements on the real CPU engine: a sweep of the tiny model
over two local RPC devices, with the KV cache kept with its layers and (slower by design) on the host, names the slow
configuration, the fastest one and what switching saves; an independent rerun of the fastest configuration measures
that saving. A sweep of two equal configurations gives no verdict against either. About 60 s."""
from __future__ import annotations

import pytest

from gpuscope.analysis import Analysis
from gpuscope.doctor.rules import headline
from gpuscope.doctor.rules import diagnose
from gpuscope.runs.sweep import sweep
from gpuscope.session import SplitConfig

DEPTHS = [1536]  # the host's KV copies grow with the context: 2-4x the step at 1536 cells
STEPS = 32


def _sweep(configs, tiny_model, engine_build):
    return sweep(configs, tiny_model, engine=engine_build.root, depths=DEPTHS, n_steps=STEPS, progress=False)


def test_a_slower_configuration_is_named_with_a_saving_the_fix_delivers(tiny_model, engine_build) -> None:
    fast = SplitConfig(devices=["rpc:0", "rpc:1"], n_ctx=2048, n_threads=1, name="kv with layers")
    slow = SplitConfig(devices=["rpc:0", "rpc:1"], offload_kqv=False, n_ctx=2048, n_threads=1, name="kv on host")
    analysis = Analysis(_sweep([fast, slow], tiny_model, engine_build))
    slower = [f for f in diagnose(analysis) if f.id == "config.slower"]
    assert [f.config for f in slower] == ["kv on host"], analysis.config_table.to_string()
    finding = slower[0]
    assert finding.evidence["fastest"] == "kv with layers"
    assert finding.evidence["settings"] == {"offload_kqv": [False, True]}
    assert headline(analysis, diagnose(analysis)).startswith("`kv on host`: ")
    # every finding names the configuration it belongs to: the copies are the slow configuration's alone
    assert all(f.config in ("kv with layers", "kv on host") for f in diagnose(analysis))
    assert {f.config for f in diagnose(analysis) if f.id == "copies.cross-device"} == {"kv on host"}

    # the fix, measured: the fastest configuration run again on its own
    rerun = Analysis(_sweep([fast], tiny_model, engine_build)).config_table
    predicted_ms = finding.evidence["ms_per_token"] - finding.evidence["ms_behind_per_token"]
    measured_ms = float(rerun["ms_per_token"].median())
    saving_predicted = finding.evidence["ms_behind_per_token"]
    saving_measured = finding.evidence["ms_per_token"] - measured_ms
    print(f"predicted {predicted_ms:.3f} ms/token after the fix, measured {measured_ms:.3f}; saving predicted "
          f"{saving_predicted:.3f}, measured {saving_measured:.3f} ms/token")
    assert saving_measured == pytest.approx(saving_predicted, rel=0.30) or \
        abs(saving_measured - saving_predicted) <= 0.03 * finding.evidence["ms_per_token"]


def test_equal_configurations_give_no_verdict_against_either(tiny_model, engine_build) -> None:
    configs = [SplitConfig(n_ctx=2048, n_threads=1, name=name) for name in ("first", "second")]
    analysis = Analysis(_sweep(configs, tiny_model, engine_build))
    assert analysis.configs == ["first", "second"]
    assert not [f for f in diagnose(analysis) if f.id == "config.slower"], [f.to_text() for f in diagnose(analysis)]
    assert not [f for f in diagnose(analysis) if f.severity != "info"]
