"""The verdict across configurations, tested against measurements on the real CPU engine: a sweep of the tiny model
over two local RPC devices, with the KV cache kept with its layers and (slower by design) on the host, names the slow
configuration, the fastest one and what switching saves; an independent rerun of the fastest configuration measures
that saving, and `--verify` measures it too, the problem and its fix interleaved in rounds. A sweep of two equal
configurations gives no verdict against either. A few minutes."""
from __future__ import annotations

import json
import shutil

import pytest

import gpuscope
from gpuscope.analysis import Analysis
from gpuscope.cli import main
from gpuscope.doctor.rules import diagnose, headline
from gpuscope.runs.record import record
from gpuscope.runs.sweep import sweep
from gpuscope.runs.verify import command_with, measure_remedy, verify, workload_of
from gpuscope.session import SplitConfig
from gpuscope.trace.model import load_trace

DEPTHS = [1536]  # the host's KV copies grow with the context: 2-4x the step at 1536 cells
STEPS = 32


FAST = SplitConfig(devices=["rpc:0", "rpc:1"], n_ctx=2048, n_threads=1, name="kv with layers")
SLOW = SplitConfig(devices=["rpc:0", "rpc:1"], offload_kqv=False, n_ctx=2048, n_threads=1, name="kv on host")


def _sweep(configs, tiny_model, engine_build, out=None):
    return sweep(configs, tiny_model, engine=engine_build.root, depths=DEPTHS, n_steps=STEPS, progress=False, out=out)


@pytest.fixture(scope="module")
def kv_sweep(tiny_model, engine_build, tmp_path_factory):
    return _sweep([FAST, SLOW], tiny_model, engine_build, out=tmp_path_factory.mktemp("verdict") / "kv.trace")


def _close(measured: float, predicted: float, step: float) -> bool:
    """The issue's target: within 30% of the prediction, or 3 points of the step."""
    return measured == pytest.approx(predicted, rel=0.30) or abs(measured - predicted) <= 0.03 * step


def test_a_slower_configuration_is_named_with_a_saving_the_fix_delivers(kv_sweep, tiny_model, engine_build) -> None:
    fast = FAST
    analysis = Analysis(kv_sweep)
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
    assert _close(saving_measured, saving_predicted, finding.evidence["ms_per_token"])
    assert finding.remedy == {"offload_kqv": True}


def test_verify_runs_the_problem_and_its_fix_side_by_side(kv_sweep) -> None:
    analysis = Analysis(kv_sweep)
    findings = verify(analysis, diagnose(analysis), rounds=2)
    slower = next(f for f in findings if f.id == "config.slower")
    copies = next(f for f in findings if f.id == "copies.cross-device")
    measured = slower.verified
    print(slower.verified_text())
    assert measured["remedy_label"] == "offload_kqv=True" and measured["rounds"] == 2
    assert copies.verified is measured  # one remedy of one configuration: measured once
    assert measured["ci_ms"][0] > 0, measured  # the fix saves time, beyond the noise
    assert measured["before_ms"] > measured["after_ms"] and measured["depths"] == DEPTHS
    # how close the prediction comes is the calibration's question (gpuscope bench doctor), asked on a quiet machine
    assert "verified: offload_kqv=True saves" in headline(analysis, findings)


def test_verify_without_the_model_keeps_the_findings_and_says_why(kv_sweep, tmp_path, capsys) -> None:
    moved = tmp_path / "kv.trace"
    shutil.copytree(kv_sweep.path, moved)
    meta = json.loads((moved / "meta.json").read_text())
    meta["model"]["path"] = str(tmp_path / "gone.gguf")
    (moved / "meta.json").write_text(json.dumps(meta))
    assert main(["doctor", str(moved), "--verify", "--json"]) == 0
    findings = {f["id"]: f for f in json.loads(capsys.readouterr().out)}
    assert findings["config.slower"]["saving_ms_per_step"] > 0  # the doctor's own verdict stands
    assert findings["config.slower"]["verified"] == {
        "saving_ms": None, "reason": f"the model file {tmp_path / 'gone.gguf'} is gone: pass the model the run used "
                                    "(--model PATH)"}
    assert load_trace(moved).meta["model"]["path"].endswith("gone.gguf")  # nothing rewritten


def test_remedies_become_the_flags_of_a_recorded_command() -> None:
    bench = ["/x/llama-bench", "-m", "m.gguf", "-fa", "1", "-nkvo", "1", "-ngl", "20"]
    assert command_with(bench, {"flash_attn": "off", "offload_kqv": True, "n_gpu_layers": -1}) == \
        ["/x/llama-bench", "-m", "m.gguf", "-fa", "0", "-nkvo", "0", "-ngl", "999"]
    cli = ["llama-cli", "-m", "m.gguf", "--no-kv-offload", "-ts", "3,1", "-p", "hi"]
    assert command_with(cli, {"offload_kqv": True, "tensor_split": [1, 1], "type_k": "q8_0"}) == \
        ["llama-cli", "-m", "m.gguf", "-p", "hi", "-ts", "1,1", "-ctk", "q8_0"]
    with pytest.raises(Exception, match="takes no flag for n_threads_batch"):
        command_with(cli, {"n_threads_batch": 2})


def test_equal_configurations_give_no_verdict_against_either(tiny_model, engine_build) -> None:
    configs = [SplitConfig(n_ctx=2048, n_threads=1, name=name) for name in ("first", "second")]
    analysis = Analysis(_sweep(configs, tiny_model, engine_build))
    assert analysis.configs == ["first", "second"]
    assert not [f for f in diagnose(analysis) if f.id == "config.slower"], [f.to_text() for f in diagnose(analysis)]
    assert not [f for f in diagnose(analysis) if f.severity != "info"]


def test_a_recorded_llama_bench_is_rerun_with_the_flag_changed(engine_build, tiny_model, tmp_path) -> None:
    """The command path of verify on a real program: llama-bench recorded with FlashAttention on, measured against
    the same command with `-fa 0`, one round each."""
    command = [str(engine_build.program("llama-bench")), "-m", str(tiny_model), "-p", "0", "-n", "32", "-r", "1",
               "-t", "1", "-fa", "1"]
    trace = record(command, tmp_path / "bench.trace", quiet=True)
    measured = measure_remedy(workload_of(trace), None, {"flash_attn": "off"}, rounds=1)
    assert measured["remedy_label"] == "flash_attn=off" and measured["steps"]["before"] >= 16
    assert measured["before_ms"] > 0 and measured["after_ms"] > 0
    assert measured["workload"].endswith("-fa 1`")


def test_the_dashboard_verifies_a_finished_sweep(tiny_model, engine_build) -> None:
    """The dashboard's Verify button: a sweep drawn live, then its remedies measured and shown beside the verdict."""
    dash = gpuscope.live(show=False, interval_s=0.5)
    assert dash.verify_button.disabled
    dash.sweep([FAST, SLOW], tiny_model, depths=DEPTHS, n_steps=STEPS, engine=engine_build.root)
    dash.wait()
    assert not dash.verify_button.disabled
    dash.verify(rounds=1)
    dash.wait()
    slower = next(f for f in dash.findings if f.id == "config.slower")
    assert slower.verified["remedy_label"] == "offload_kqv=True" and slower.verified["saving_ms"] > 0
    assert "verified: offload_kqv=True saves" in dash.findings_html.value
