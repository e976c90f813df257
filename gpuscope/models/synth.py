"""Random-weight llama-shaped models, so that a model's shape can be profiled without downloading it.

Decode cost depends on tensor shapes and types, not on weight values, so a synthetic model with the dimensions of
a real one stands in for it when measuring step time. Files are written with the `gguf` package one tensor at a
time (an 8B F16 file is 14.5 GB). Quantized types are written directly as random blocks of each tensor's ggml type,
with the per-tensor type mix llama-quantize would choose: no F16 intermediate, so a 70B Q4_K_M (42 GB) needs
42 GB of disk, not 141 more.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gguf
import numpy as np

from gpuscope.errors import ModelShapeError
from gpuscope.models.store import atomic_output, models_dir, progress

# Bump when the bytes written for a given shape and seed change, so that cached files are regenerated.
GENERATOR_VERSION = 2

# The minimal SPM vocabulary: <unk>, <s>, </s>, then one token per byte (so any text tokenizes by byte
# fallback), then filler pieces up to n_vocab.
_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
_UNK_ID, _BOS_ID, _EOS_ID = range(3)
MIN_VOCAB = len(_SPECIAL_TOKENS) + 256

WEIGHT_STD = 0.02
_CHUNK_ELEMENTS = 1 << 22  # per generator call: bounds temporary float32 memory at 16 MiB per thread
_PROGRESS_MIN_BYTES = 256 << 20  # shapes smaller than this are written without progress lines

Q = gguf.GGMLQuantizationType
# Model type -> (GGUF file type, the default type of its matrices); ModelShape.tensors applies llama-quantize's mix.
MODEL_TYPES: dict[str, tuple[gguf.LlamaFileType, gguf.GGMLQuantizationType]] = {
    "f16": (gguf.LlamaFileType.MOSTLY_F16, Q.F16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, Q.Q8_0),
    "q4_k_m": (gguf.LlamaFileType.MOSTLY_Q4_K_M, Q.Q4_K),
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # numpy order: rows first (GGUF stores the reverse)
    type: gguf.GGMLQuantizationType

    @property
    def nbytes(self) -> int:
        block_elements, block_bytes = gguf.GGML_QUANT_SIZES[self.type]
        return math.prod(self.shape) // block_elements * block_bytes

    @property
    def byte_shape(self) -> tuple[int, ...]:
        """The shape of the tensor's bytes, rows first (the gguf writer takes quantized tensors so)."""
        block_elements, block_bytes = gguf.GGML_QUANT_SIZES[self.type]
        return (*self.shape[:-1], self.shape[-1] // block_elements * block_bytes)


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a llama-architecture transformer.

    head_dim defaults to n_embd / n_head; set it to decouple the attention width from n_embd (the engine's llama
    architecture reads attention.key_length / value_length, so e.g. 4 heads of 256 on a 640-wide model load).
    """

    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    head_dim: int | None = None
    n_ctx_train: int = 4096
    rope_freq_base: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False  # no output.weight: the engine reuses token_embd for the logits

    def __post_init__(self) -> None:
        for name in ("n_embd", "n_layer", "n_head", "n_head_kv", "n_ff", "n_vocab", "n_ctx_train"):
            if getattr(self, name) < 1:
                raise ModelShapeError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.head_dim is None:
            if self.n_embd % self.n_head:
                raise ModelShapeError(
                    f"n_head={self.n_head} does not divide n_embd={self.n_embd}; "
                    f"change one of them or set head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.n_embd // self.n_head)
        if self.head_dim < 2 or self.head_dim % 2:
            raise ModelShapeError(f"head_dim must be even (RoPE rotates pairs), got {self.head_dim}")
        if self.n_head % self.n_head_kv:
            raise ModelShapeError(
                f"n_head_kv={self.n_head_kv} does not divide n_head={self.n_head}; "
                f"grouped-query attention shares each KV head among n_head / n_head_kv query heads"
            )
        if self.n_vocab < MIN_VOCAB:
            raise ModelShapeError(
                f"n_vocab must be at least {MIN_VOCAB} (3 special tokens and 256 byte tokens), got {self.n_vocab}"
            )
        if not self.rope_freq_base > 0 or not self.rms_norm_eps > 0:
            raise ModelShapeError("rope_freq_base and rms_norm_eps must be positive")

    def tensors(self, type: str = "f16") -> list[TensorSpec]:
        """Every tensor the engine's llama loader requires, in file order, with its ggml type in model `type`."""
        if type not in MODEL_TYPES:
            raise ModelShapeError(f"unknown model type {type!r}; choose one of {', '.join(MODEL_TYPES)}")
        q_width = self.n_head * self.head_dim
        kv_width = self.n_head_kv * self.head_dim
        T = gguf.MODEL_TENSOR
        mix = _type_mix(self, type)

        def weight(kind: gguf.MODEL_TENSOR, shape: tuple[int, ...], layer: int | None = None) -> TensorSpec:
            name = gguf.TENSOR_NAMES[kind].format(bid=layer) + ".weight"
            spec = TensorSpec(name, shape, Q.F32 if len(shape) == 1 else mix(kind, layer))
            block_elements = gguf.GGML_QUANT_SIZES[spec.type][0]
            if shape[-1] % block_elements:
                raise ModelShapeError(f"{name} has rows of {shape[-1]} values, not a multiple of {block_elements} "
                                      f"as {spec.type.name} blocks need: choose widths that are, or type f16")
            return spec

        specs = [weight(T.TOKEN_EMBD, (self.n_vocab, self.n_embd))]
        for layer in range(self.n_layer):
            specs += [
                weight(T.ATTN_NORM, (self.n_embd,), layer),
                weight(T.ATTN_Q, (q_width, self.n_embd), layer),
                weight(T.ATTN_K, (kv_width, self.n_embd), layer),
                weight(T.ATTN_V, (kv_width, self.n_embd), layer),
                weight(T.ATTN_OUT, (self.n_embd, q_width), layer),
                weight(T.FFN_NORM, (self.n_embd,), layer),
                weight(T.FFN_GATE, (self.n_ff, self.n_embd), layer),
                weight(T.FFN_UP, (self.n_ff, self.n_embd), layer),
                weight(T.FFN_DOWN, (self.n_embd, self.n_ff), layer),
            ]
        specs.append(weight(T.OUTPUT_NORM, (self.n_embd,)))
        if not self.tie_embeddings:
            specs.append(weight(T.OUTPUT, (self.n_vocab, self.n_embd)))
        return specs

    @property
    def n_params(self) -> int:
        return sum(math.prod(spec.shape) for spec in self.tensors())

    def key(self) -> str:
        """A short digest of every field and the generator version: the cache identity of this shape."""
        fields = dataclasses.asdict(self) | {"generator": GENERATOR_VERSION}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]


PRESETS: dict[str, ModelShape] = {
    # Decodes in milliseconds on a CPU; 8 MB in F16. Every matrix width is a multiple of 256 so Q4_K applies.
    "tiny": ModelShape(n_embd=256, n_layer=4, n_head=4, n_head_kv=2, n_ff=768, n_vocab=2048, n_ctx_train=2048),
    # Llama 3.2 1B (without its RoPE frequency scaling, which does not change the cost of a step).
    "1b": ModelShape(n_embd=2048, n_layer=16, n_head=32, n_head_kv=8, n_ff=8192, n_vocab=128256,
                     n_ctx_train=131072, rope_freq_base=500000.0, tie_embeddings=True),
    # Mistral-7B-like 8B: 14.48 GB in F16, the shape of the field notes' H100 baseline.
    "8b": ModelShape(n_embd=4096, n_layer=32, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=32000, n_ctx_train=32768),
    # Llama 3 70B (without its RoPE frequency scaling): 42.5 GB in Q4_K_M.
    "70b": ModelShape(n_embd=8192, n_layer=80, n_head=64, n_head_kv=8, n_ff=28672, n_vocab=128256,
                      n_ctx_train=131072, rope_freq_base=500000.0),
    # Gemma 3 270M's attention geometry (4 query heads of 256, one KV head) in the plain llama architecture:
    # exercises the head-size-256 FlashAttention path without Gemma's sliding-window layers.
    "d256": ModelShape(n_embd=640, n_layer=18, n_head=4, n_head_kv=1, head_dim=256, n_ff=2048, n_vocab=262144,
                       n_ctx_train=32768, rope_freq_base=1000000.0, rms_norm_eps=1e-6, tie_embeddings=True),
}


def parse_shape(spec: str) -> ModelShape:
    """A preset name (`tiny`, `1b`, `8b`, `d256`), `key=value,...` with every required field, or a preset
    followed by overrides (`8b,n_layer=2`)."""
    items = [item.strip() for item in spec.split(",") if item.strip()]
    if not items:
        raise ModelShapeError("empty shape: give a preset name or key=value,...")
    fields: dict[str, object] = {}
    if "=" not in items[0]:
        name = items.pop(0)
        if name not in PRESETS:
            raise ModelShapeError(
                f"unknown shape {name!r}: use a preset ({', '.join(PRESETS)}) or key=value,... "
                f"with keys {', '.join(_field_types())}"
            )
        preset = PRESETS[name]
        fields = dataclasses.asdict(preset)
        if preset.head_dim == preset.n_embd // preset.n_head:
            fields["head_dim"] = None  # derived, so derived again from overridden n_embd / n_head
    fields |= _parse_overrides(items)
    missing = [field.name for field in dataclasses.fields(ModelShape)
               if field.default is dataclasses.MISSING and field.name not in fields]
    if missing:
        raise ModelShapeError(f"shape {spec!r} lacks {', '.join(missing)}")
    return ModelShape(**fields)


def _field_types() -> dict[str, type]:
    hints = {"int": int, "int | None": int, "float": float, "bool": bool}
    return {field.name: hints[field.type] for field in dataclasses.fields(ModelShape)}


def _parse_overrides(items: list[str]) -> dict[str, object]:
    types = _field_types()
    values: dict[str, object] = {}
    for item in items:
        key, sep, text = (part.strip() for part in item.partition("="))
        if not sep:
            raise ModelShapeError(f"{item!r} is not key=value (a preset name may only come first)")
        if key not in types:
            raise ModelShapeError(f"unknown shape key {key!r}; known keys: {', '.join(types)}")
        if key in values:
            raise ModelShapeError(f"shape key {key!r} is given twice")
        values[key] = _parse_value(key, text, types[key])
    return values


def _parse_value(key: str, text: str, kind: type) -> object:
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        return kind(text)
    except ValueError:
        raise ModelShapeError(f"{key}={text!r} is not a valid {kind.__name__}") from None


def shape_label(shape: ModelShape) -> str:
    """The preset's name, or the main dimensions for a custom shape: the readable part of a cache file name."""
    for name, preset in PRESETS.items():
        if preset == shape:
            return name
    return (f"e{shape.n_embd}-l{shape.n_layer}-h{shape.n_head}-kv{shape.n_head_kv}-d{shape.head_dim}"
            f"-ff{shape.n_ff}-v{shape.n_vocab}")


def synth_dir() -> Path:
    path = models_dir() / "synth"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_path(shape: ModelShape, type: str = "f16", seed: int = 0) -> Path:
    return synth_dir() / f"llama-{shape_label(shape)}-{type}-seed{seed}-{shape.key()}.gguf"


def synth_model(shape: ModelShape | str, type: str = "f16", out: str | os.PathLike | None = None,
                seed: int = 0) -> Path:
    """A random-weight llama model of `shape` (a ModelShape, or a spec for `parse_shape`) in `type` (f16, q8_0,
    q4_k_m). Without `out` the file is cached by shape, type and seed and reused."""
    if isinstance(shape, str):
        shape = parse_shape(shape)
    specs = shape.tensors(type)
    target = Path(out) if out is not None else cache_path(shape, type, seed)
    if out is None and target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    write_model(shape, type, specs, seed, target)
    return target


def _type_mix(shape: ModelShape, type: str) -> Callable[[gguf.MODEL_TENSOR, int | None], gguf.GGMLQuantizationType]:
    """The ggml type of each matrix, as llama-quantize chooses it for the llama architecture in this engine
    (llama_tensor_get_type_impl in src/llama-quant.cpp): Q4_K_M keeps the output matrix (and embeddings tied to
    it) in Q6_K, and attn_v and ffn_down in Q6_K on the first and last eighth of the layers and every third
    between; a 70B (80 layers, grouped KV heads) has its other attn_v matrices in Q5_K."""
    default = MODEL_TYPES[type][1]
    T = gguf.MODEL_TENSOR

    def more_bits(layer: int) -> bool:
        n = shape.n_layer
        return layer < n // 8 or layer >= 7 * n // 8 or (layer - n // 8) % 3 == 2

    def mix(kind: gguf.MODEL_TENSOR, layer: int | None) -> gguf.GGMLQuantizationType:
        if type != "q4_k_m":
            return default
        if kind == T.OUTPUT or (kind == T.TOKEN_EMBD and shape.tie_embeddings):
            return Q.Q6_K
        if kind in (T.ATTN_V, T.FFN_DOWN) and more_bits(layer):
            return Q.Q6_K
        if kind == T.ATTN_V and shape.n_layer == 80 and shape.n_head != shape.n_head_kv:
            return Q.Q5_K
        return default

    return mix


def write_model(shape: ModelShape, type: str, specs: list[TensorSpec], seed: int, target: Path) -> None:
    """Write the model, streaming: one tensor in memory at a time."""
    total_bytes = sum(spec.nbytes for spec in specs)
    report = total_bytes >= _PROGRESS_MIN_BYTES
    if report:
        progress(f"writing a {shape.n_params / 1e9:.2f}B-parameter llama model in {type} ({total_bytes / 1e9:.2f} GB)"
                 f" to {target}")
    started = time.monotonic()
    with atomic_output(target) as partial:
        writer = gguf.GGUFWriter(partial, "llama")
        try:
            _write_header(writer, shape, type, specs, seed)
            written = 0
            reported_tenths = 0
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                for index, spec in enumerate(specs):
                    writer.write_tensor_data(_tensor_bytes(spec, seed, index, pool))
                    written += spec.nbytes
                    tenths = written * 10 // total_bytes
                    if report and tenths > reported_tenths:
                        progress(f"  {written / total_bytes:4.0%} written, {time.monotonic() - started:.0f} s")
                        reported_tenths = tenths
        finally:
            writer.close()


def write_header(shape: ModelShape | str, type: str, target: str | os.PathLike, seed: int = 0) -> Path:
    """Only the GGUF header of a synthetic model (metadata and tensor infos, no weights): all that its byte profile
    (gpuscope.trace.model_bytes) is read from."""
    if isinstance(shape, str):
        shape = parse_shape(shape)
    writer = gguf.GGUFWriter(Path(target), "llama")
    try:
        _write_header(writer, shape, type, shape.tensors(type), seed)
    finally:
        writer.close()
    return Path(target)


def _write_header(writer: gguf.GGUFWriter, shape: ModelShape, type: str, specs: list[TensorSpec], seed: int) -> None:
    _add_metadata(writer, shape, type, seed)
    for spec in specs:
        writer.add_tensor_info(spec.name, spec.byte_shape, np.dtype(np.uint8), spec.nbytes, raw_dtype=spec.type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()


def _add_metadata(writer: gguf.GGUFWriter, shape: ModelShape, type: str, seed: int) -> None:
    writer.add_name(f"gpuscope synthetic llama {shape_label(shape)}")
    writer.add_file_type(MODEL_TYPES[type][0])
    writer.add_context_length(shape.n_ctx_train)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_key_length(shape.head_dim)
    writer.add_value_length(shape.head_dim)
    writer.add_rope_dimension_count(shape.head_dim)  # the llama loader requires n_rot == head_dim
    writer.add_rope_freq_base(shape.rope_freq_base)
    writer.add_layer_norm_rms_eps(shape.rms_norm_eps)
    writer.add_vocab_size(shape.n_vocab)
    # Provenance, so that a trace of a synthetic model says so (llama-quantize copies these keys).
    writer.add_string("gpuscope.synth.shape", json.dumps(dataclasses.asdict(shape), sort_keys=True))
    writer.add_uint32("gpuscope.synth.seed", seed)
    writer.add_uint32("gpuscope.synth.generator", GENERATOR_VERSION)

    n_fill = shape.n_vocab - MIN_VOCAB
    tokens = [*_SPECIAL_TOKENS, *(f"<0x{byte:02X}>" for byte in range(256)),
              *(f"\u2581t{index}" for index in range(n_fill))]
    token_types = ([gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
                   + [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * n_fill)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * MIN_VOCAB + [-float(index) for index in range(n_fill)])
    writer.add_token_types([int(kind) for kind in token_types])
    writer.add_unk_token_id(_UNK_ID)
    writer.add_bos_token_id(_BOS_ID)
    writer.add_eos_token_id(_EOS_ID)
    writer.add_add_bos_token(True)


def _tensor_bytes(spec: TensorSpec, seed: int, index: int, pool: ThreadPoolExecutor) -> np.ndarray:
    """The tensor's bytes: norm weights are ones; F16 matrices uniform noise, quantized matrices random blocks
    (below), both with mean zero and standard deviation WEIGHT_STD.

    Uniform rather than normal: it is several times faster to draw, and values do not change decode cost. Each
    chunk has its own generator keyed by (seed, tensor, chunk), so the bytes do not depend on the thread count.
    """
    if spec.type == Q.F32:
        return np.ones(spec.shape, dtype=np.float32).view(np.uint8)
    out = np.empty(spec.byte_shape, dtype=np.uint8)
    flat = out.reshape(-1)
    if spec.type == Q.F16:
        values = flat.view(np.float16)
        half_width = WEIGHT_STD * math.sqrt(3.0)
        chunk_bytes = 2 * _CHUNK_ELEMENTS

        def fill(chunk: int) -> None:
            start, stop = chunk * _CHUNK_ELEMENTS, min((chunk + 1) * _CHUNK_ELEMENTS, values.size)
            draws = np.random.default_rng([seed, index, chunk]).random(stop - start, dtype=np.float32)
            np.subtract(draws, 0.5, out=draws)
            np.multiply(draws, 2.0 * half_width, out=values[start:stop], casting="unsafe")
    else:
        block_bytes = gguf.GGML_QUANT_SIZES[spec.type][1]
        blocks_per_chunk = max(1, 2 * _CHUNK_ELEMENTS // block_bytes)
        chunk_bytes = blocks_per_chunk * block_bytes
        scales = _block_scales(spec.type)

        def fill(chunk: int) -> None:
            start, stop = chunk * chunk_bytes, min((chunk + 1) * chunk_bytes, flat.size)
            part = flat[start:stop]
            part[:] = np.frombuffer(np.random.default_rng([seed, index, chunk]).bytes(stop - start), np.uint8)
            _set_scales(part.reshape(-1, block_bytes), scales)

    list(pool.map(fill, range(math.ceil(flat.size / chunk_bytes))))
    return out


# Where each block type keeps its f16 scale d (and, for the K-quants with minimums, dmin), and the dmin/d ratio
# that centres the values on zero (the mean 4- or 5-bit quant): block_q8_0, block_q4_K, block_q5_K and block_q6_K
# in ggml-common.h. All other bytes of a block (quants, packed sub-block scales) are random.
_SCALE_LAYOUT: dict[gguf.GGMLQuantizationType, tuple[int, int | None, float]] = {
    Q.Q8_0: (0, None, 0.0), Q.Q4_K: (0, 2, 7.5), Q.Q5_K: (0, 2, 15.5), Q.Q6_K: (208, None, 0.0),
}


@functools.cache
def _block_scales(block_type: gguf.GGMLQuantizationType) -> list[tuple[int, float]]:
    """(byte offset, f16 value) of the scales that give random blocks of this type a standard deviation of
    WEIGHT_STD: measured by dequantizing random blocks with d = 1."""
    d_at, dmin_at, ratio = _SCALE_LAYOUT[block_type]
    block_bytes = gguf.GGML_QUANT_SIZES[block_type][1]
    sample = np.frombuffer(np.random.default_rng(0).bytes(4096 * block_bytes), np.uint8).reshape(-1, block_bytes).copy()

    def with_scales(d: float) -> list[tuple[int, float]]:
        return [(d_at, d)] + ([(dmin_at, d * ratio)] if dmin_at is not None else [])

    _set_scales(sample, with_scales(1.0))
    unit_std = float(gguf.quants.dequantize(sample.reshape(-1), block_type).std())
    return with_scales(WEIGHT_STD / unit_std)


def _set_scales(blocks: np.ndarray, scales: list[tuple[int, float]]) -> None:
    """Write each (byte offset, value) as an f16 into every block (rows of `blocks`)."""
    for offset, value in scales:
        blocks[:, offset:offset + 2] = np.frombuffer(np.float16(value).tobytes(), np.uint8)
