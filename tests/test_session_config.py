"""Split configurations and the binding check: every invalid case gets its own clear error (no engine needed)."""
from __future__ import annotations

import shutil

import pytest

from gpuscope.errors import BindingMismatchError, SplitConfigError
from gpuscope.session.binding import (EngineBuild, abi_differences, binding_source, binding_struct_fields,
                                      c_struct_fields, load_binding)
from gpuscope.session.config import DeviceSpec, SplitConfig

CPU = DeviceSpec("CPU", "cpu", row_split=False)
CUDA0 = DeviceSpec("CUDA0", "gpu", row_split=True)
CUDA1 = DeviceSpec("CUDA1", "gpu", row_split=True)


@pytest.mark.parametrize("values, message", [
    ({"split_mode": "rows"}, "split_mode='rows' is not one of"),
    ({"flash_attn": "yes"}, "flash_attn='yes' is not one of"),
    ({"type_k": "q3_k"}, "type_k='q3_k' is not one of"),
    ({"n_ubatch": 1024, "n_batch": 512}, "n_ubatch=1024 is larger than n_batch=512"),
    ({"split_mode": "tensor", "flash_attn": "off"}, "split_mode='tensor' requires flash attention"),
    ({"type_v": "q8_0", "flash_attn": "off"}, "quantized V cache (type_v='q8_0') requires flash attention"),
    ({"split_mode": "none", "tensor_split": [1, 1]}, "tensor_split has no effect with split_mode='none'"),
    ({"tensor_split": [1, -1]}, "must be non-negative proportions"),
    ({"tensor_split": [0, 0]}, "with a positive sum"),
    ({"devices": ["rpc:0", "rpc:0"]}, "devices lists rpc:0 more than once"),
    ({"devices": ["rpc:x:y"]}, "neither 'rpc:N'"),
    ({"devices": "CUDA0"}, "devices must be a list"),
    ({"n_gpu_layers": -2}, "n_gpu_layers must be an integer >= -1"),
    ({"n_ctx": 0}, "n_ctx must be an integer >= 1"),
    ({"n_threads": True}, "n_threads must be an integer >= 1"),
])
def test_invalid_values_are_refused_on_construction(values, message):
    with pytest.raises(SplitConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        SplitConfig(**values)


@pytest.mark.parametrize("config, devices, n_ctx_train, message", [
    (SplitConfig(devices=["CUDA7"]), [CPU, CUDA0], None, "unknown device 'CUDA7': this engine build sees CPU, CUDA0"),
    (SplitConfig(devices=["CUDA0", "CUDA1"], tensor_split=[1, 1, 1]), [CPU, CUDA0, CUDA1], None,
     "tensor_split has 3 entries but the model is split over 2 device"),
    (SplitConfig(tensor_split=[3, 1]), [CPU], None, "over 0 device"),  # the engine default: no GPU here
    (SplitConfig(devices=["rpc:0", "rpc:1"], split_mode="row"), [CPU], None,
     "rpc:0, rpc:1 cannot \\(RPC and CPU devices never can\\)"),
    (SplitConfig(devices=[], split_mode="row"), [CPU], None, "needs devices to split rows over"),
    (SplitConfig(split_mode="tensor"), [CPU], None, "needs at least one device other than the local CPU"),
    (SplitConfig(devices=["CUDA0"], split_mode="none", main_gpu=1), [CPU, CUDA0], None, "main_gpu=1 but only 1"),
    (SplitConfig(n_ctx=8192), [CPU], 2048, "n_ctx=8192 is larger than the model's training context \\(2048\\)"),
])
def test_configurations_that_do_not_fit_the_machine_or_model(config, devices, n_ctx_train, message):
    with pytest.raises(SplitConfigError, match=message):
        config.check_against(devices, n_ctx_train)


def test_valid_configurations_pass_and_row_split_works_where_supported():
    SplitConfig(devices=["CUDA0", "CUDA1"], split_mode="row", tensor_split=[3, 1]).check_against(
        [CPU, CUDA0, CUDA1], 32768)
    SplitConfig(devices=["rpc:0", "rpc:1", "cuda0"]).check_against([CPU, CUDA0], 4096)  # names are case-blind
    assert SplitConfig().context_size(2048) == 2048 and SplitConfig().context_size(None) == 4096


def test_labels_are_short_and_say_what_differs_from_the_defaults():
    assert SplitConfig().label == "auto"
    assert SplitConfig(devices=[]).label == "cpu"
    assert SplitConfig(devices=["rpc:0", "rpc:1"]).label == "rpc0+rpc1 layer"
    assert SplitConfig(devices=["CUDA0", "CUDA1"], tensor_split=[3, 1], flash_attn="on", type_k="q8_0",
                       type_v="q8_0", n_gpu_layers=20).label == "cuda0+cuda1 layer ngl20 ts3:1 fa-on kv-q8_0"
    assert SplitConfig(devices=["rpc:10.0.0.2:50052"], name="remote box").label == "remote box"


def test_configurations_round_trip_through_dicts_and_the_command_line_form():
    config = SplitConfig(devices=["rpc:0", "CUDA0"], tensor_split=[1, 2], split_mode="layer", n_ctx=2048,
                         type_k="q8_0", op_offload=False, name="mixed")
    assert SplitConfig.from_dict(config.to_dict()) == config
    assert SplitConfig.from_dict(config.to_dict()).label == "mixed"
    parsed = SplitConfig.parse("devices=rpc:0,CUDA0 tensor_split=1,2 n_ctx=2048 type_k=q8_0 op_offload=false "
                               "name=mixed")
    assert parsed == config
    assert SplitConfig.parse("devices=cpu").devices == () and SplitConfig.parse("").devices is None
    with pytest.raises(SplitConfigError, match="unknown configuration key 'gpus'"):
        SplitConfig.parse("gpus=2")
    with pytest.raises(SplitConfigError, match="unknown configuration key"):
        SplitConfig.from_dict({**config.to_dict(), "extra": 1})


# ---- the binding's structs against a build's llama.h --------------------------------------------------------------

def test_the_installed_binding_declares_the_structs_field_by_field():
    fields = dict(binding_struct_fields(binding_source(), "llama_context_params"))
    assert fields["n_ctx"] == 4 and fields["cb_eval"] == 8 and fields["embeddings"] == 1


def test_a_fork_that_adds_a_context_field_is_refused_with_a_pointer_to_record(tmp_path, engine_build):
    """A fork's llama.h with one more field in llama_context_params: the binding would pass a struct of the
    wrong layout, so loading is refused before libllama is touched."""
    assert abi_differences(engine_build) == []
    include = tmp_path / "include"
    include.mkdir()
    for folder in engine_build.include_dirs:
        for header in folder.glob("*.h"):
            shutil.copy(header, include / header.name)
    llama_h = include / "llama.h"
    text = llama_h.read_text()
    anchor = "        int32_t  n_threads_batch;"
    assert anchor in text
    llama_h.write_text(text.replace(anchor, anchor + "\n        uint32_t n_fork_draft_max; // a fork's addition", 1))
    fork = EngineBuild(root=tmp_path, bin_dir=engine_build.bin_dir, include_dirs=(include,), meta={})
    assert "n_fork_draft_max" in [f.name for f in c_struct_fields(fork.headers_text(), "llama_context_params")]
    problems = abi_differences(fork)
    assert problems == ["struct llama_context_params: the build adds n_fork_draft_max"]
    with pytest.raises(BindingMismatchError, match="(?s)n_fork_draft_max.*gpuscope record"):
        load_binding(fork)
