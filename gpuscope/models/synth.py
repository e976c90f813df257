"""Random-weight llama-shaped models, so that a model's shape can be profiled without downloading it.

Decode cost depends on tensor shapes and types, not on weight values, so a synthetic model with the dimensions of
a real one stands in for it when measuring step time. Files are written with the `gguf` package one tensor at a
time (an 8B F16 file is 14.5 GB) and quantized, when asked, with the engine's own `llama-quantize`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from gpuscope.engine.build import find_program
from gpuscope.errors import EngineNotFoundError, ModelShapeError, QuantizeError
from gpuscope.models.store import atomic_output, models_dir, progress

# Bump when the bytes written for a given shape and seed change, so that cached files are regenerated.
GENERATOR_VERSION = 1

# The minimal SPM vocabulary: <unk>, <s>, </s>, then one token per byte (so any text tokenizes by byte
# fallback), then filler pieces up to n_vocab.
_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
_UNK_ID, _BOS_ID, _EOS_ID = range(3)
MIN_VOCAB = len(_SPECIAL_TOKENS) + 256

WEIGHT_STD = 0.02
_CHUNK_ELEMENTS = 1 << 22  # per generator call: bounds temporary float32 memory at 16 MiB per thread
_PROGRESS_MIN_BYTES = 256 << 20  # shapes smaller than this are written without progress lines

# Output type -> the type name llama-quantize takes (None: written directly, no quantization).
MODEL_TYPES: dict[str, str | None] = {"f16": None, "q8_0": "Q8_0", "q4_k_m": "Q4_K_M"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # numpy order: rows first (GGUF stores the reverse)
    dtype: type[np.floating]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


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

    def tensors(self) -> list[TensorSpec]:
        """Every tensor the engine's llama loader requires, in file order."""
        q_width = self.n_head * self.head_dim
        kv_width = self.n_head_kv * self.head_dim
        T = gguf.MODEL_TENSOR

        def weight(kind: gguf.MODEL_TENSOR, shape: tuple[int, ...], layer: int | None = None,
                   dtype: type[np.floating] = np.float16) -> TensorSpec:
            return TensorSpec(gguf.TENSOR_NAMES[kind].format(bid=layer) + ".weight", shape, dtype)

        specs = [weight(T.TOKEN_EMBD, (self.n_vocab, self.n_embd))]
        for layer in range(self.n_layer):
            specs += [
                weight(T.ATTN_NORM, (self.n_embd,), layer, np.float32),
                weight(T.ATTN_Q, (q_width, self.n_embd), layer),
                weight(T.ATTN_K, (kv_width, self.n_embd), layer),
                weight(T.ATTN_V, (kv_width, self.n_embd), layer),
                weight(T.ATTN_OUT, (self.n_embd, q_width), layer),
                weight(T.FFN_NORM, (self.n_embd,), layer, np.float32),
                weight(T.FFN_GATE, (self.n_ff, self.n_embd), layer),
                weight(T.FFN_UP, (self.n_ff, self.n_embd), layer),
                weight(T.FFN_DOWN, (self.n_embd, self.n_ff), layer),
            ]
        specs.append(weight(T.OUTPUT_NORM, (self.n_embd,), dtype=np.float32))
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


def synth_model(shape: ModelShape | str, type: str = "f16", out: str | os.PathLike | None = None, seed: int = 0,
                quantize: str | os.PathLike | None = None) -> Path:
    """A random-weight llama model of `shape` (a ModelShape, or a spec for `parse_shape`) in `type`.

    Without `out` the file is cached by shape, type and seed and reused. Quantized types run `quantize`, the path
    of a `llama-quantize` program (default: the most recent hooked CPU engine build's); the F16 source is taken from the
    cache if there, else written to a temporary file that is deleted afterwards.
    """
    if isinstance(shape, str):
        shape = parse_shape(shape)
    if type not in MODEL_TYPES:
        raise ModelShapeError(f"unknown model type {type!r}; choose one of {', '.join(MODEL_TYPES)}")
    target = Path(out) if out is not None else cache_path(shape, type, seed)
    if out is None and target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    quantize_type = MODEL_TYPES[type]
    if quantize_type is None:
        write_f16(shape, seed, target)
        return target
    program = _quantize_program(quantize)
    cached_f16 = cache_path(shape, "f16", seed)
    if cached_f16.is_file():
        run_quantize(program, cached_f16, target, quantize_type)
        return target
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".gpuscope-synth-") as scratch:
        intermediate = Path(scratch) / "f16.gguf"
        write_f16(shape, seed, intermediate)
        run_quantize(program, intermediate, target, quantize_type)
    return target


def write_f16(shape: ModelShape, seed: int, target: Path) -> None:
    """Write the model as F16 matrices and F32 norms, streaming: one tensor in memory at a time."""
    specs = shape.tensors()
    total_bytes = sum(spec.nbytes for spec in specs)
    report = total_bytes >= _PROGRESS_MIN_BYTES
    if report:
        progress(f"writing a {shape.n_params / 1e9:.2f}B-parameter llama model ({total_bytes / 1e9:.2f} GB) "
                 f"to {target}")
    started = time.monotonic()
    with atomic_output(target) as partial:
        writer = gguf.GGUFWriter(partial, "llama")
        try:
            _add_metadata(writer, shape, seed)
            for spec in specs:
                writer.add_tensor_info(spec.name, spec.shape, np.dtype(spec.dtype), spec.nbytes)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            written = 0
            reported_tenths = 0
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                for index, spec in enumerate(specs):
                    writer.write_tensor_data(_tensor_values(spec, seed, index, pool))
                    written += spec.nbytes
                    tenths = written * 10 // total_bytes
                    if report and tenths > reported_tenths:
                        progress(f"  {written / total_bytes:4.0%} written, {time.monotonic() - started:.0f} s")
                        reported_tenths = tenths
        finally:
            writer.close()


def _add_metadata(writer: gguf.GGUFWriter, shape: ModelShape, seed: int) -> None:
    writer.add_name(f"gpuscope synthetic llama {shape_label(shape)}")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
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


def _tensor_values(spec: TensorSpec, seed: int, index: int, pool: ThreadPoolExecutor) -> np.ndarray:
    """Norm weights are ones; matrices are uniform noise with standard deviation WEIGHT_STD.

    Uniform rather than normal: it is several times faster to draw, and values do not change decode cost. Each
    chunk has its own generator keyed by (seed, tensor, chunk), so the bytes do not depend on the thread count.
    """
    if len(spec.shape) == 1:
        return np.ones(spec.shape, dtype=spec.dtype)
    values = np.empty(spec.shape, dtype=spec.dtype)
    flat = values.reshape(-1)
    half_width = WEIGHT_STD * math.sqrt(3.0)

    def fill(chunk: int) -> None:
        start = chunk * _CHUNK_ELEMENTS
        stop = min(start + _CHUNK_ELEMENTS, flat.size)
        draws = np.random.default_rng([seed, index, chunk]).random(stop - start, dtype=np.float32)
        np.subtract(draws, 0.5, out=draws)
        np.multiply(draws, 2.0 * half_width, out=flat[start:stop], casting="unsafe")

    list(pool.map(fill, range(math.ceil(flat.size / _CHUNK_ELEMENTS))))
    return values


def run_quantize(program: Path, source: Path, target: Path, quantize_type: str) -> None:
    """Run llama-quantize from `source` into `target` (atomically); its output is forwarded as progress."""
    progress(f"quantizing to {quantize_type} with {program}")
    with atomic_output(target) as partial:
        command = [str(program), str(source), str(partial), quantize_type, str(os.cpu_count() or 1)]
        tail: deque[str] = deque(maxlen=15)
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   errors="replace")
        assert process.stdout is not None
        for line in process.stdout:
            tail.append(line.rstrip())
            print(f"  llama-quantize: {line.rstrip()}", file=sys.stderr, flush=True)
        if process.wait() != 0:
            raise QuantizeError(f"{program} failed with exit status {process.returncode}:\n" + "\n".join(tail))


def _quantize_program(quantize: str | os.PathLike | None) -> Path:
    """The given llama-quantize, or the one of the most recent hooked CPU engine build."""
    if quantize is None:
        try:
            return find_program("llama-quantize")
        except EngineNotFoundError as exc:
            raise QuantizeError(f"quantized types need llama-quantize: {exc}; or pass the path of one "
                                f"(--quantize PATH on the command line, quantize=PATH in Python)") from None
    program = Path(quantize)
    if not (program.is_file() and os.access(program, os.X_OK)):
        raise QuantizeError(f"{program} is not an executable llama-quantize program")
    return program
