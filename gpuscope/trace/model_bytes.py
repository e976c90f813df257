"""What one decode step must read from memory, from the GGUF file itself: weight bytes and KV bytes per cell.

Only the header is read (metadata and tensor infos), with a small parser of our own: the `gguf` package's reader
maps and parses every array (a 262k-token vocabulary takes it seconds), where the doctor needs a few numbers.
The `gguf` package still supplies the type sizes, so the block sizes stay the engine's.
"""
from __future__ import annotations

import functools
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from gpuscope.errors import GpuscopeError


class ModelFileError(GpuscopeError):
    """A model file that is not a GGUF file this reader understands."""


# Architectures whose engine code sets a sliding-window pattern when the file has none (src/models/*.cpp of the
# pinned engine: load_swa_pattern(ml, n_pattern, dense_first)).
_DEFAULT_SWA_PATTERN: dict[str, tuple[int, bool]] = {
    "gemma2": (2, False), "gemma3": (6, False), "gemma3n": (5, False), "gemma-embedding": (6, False),
    "cohere2": (4, False), "exaone4": (4, False), "olmo2": (4, False), "gpt-oss": (2, False),
    "llama4": (4, False),
}

_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_LAYER = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class ModelBytes:
    """Byte counts of a model, as one decode step reads them."""
    path: str
    architecture: str
    n_layer: int
    weight_bytes: int                 # every tensor in the file
    weight_bytes_per_step: int        # what one token's forward pass reads (embedding rows and unused experts not)
    layer_bytes: tuple[int, ...]      # weights of each block
    kv_elements_per_cell: tuple[tuple[int, int], ...]  # per layer, K and V elements of one cell
    kv_bytes_per_cell: tuple[int, ...]  # per layer, K + V of one cell at the given cache types
    swa_layers: tuple[bool, ...]      # layers that only attend to the last `sliding_window` cells
    sliding_window: int
    cache_types: tuple[str, str]
    metadata: dict = field(default_factory=dict, compare=False, repr=False)

    def kv_bytes_read(self, n_kv: np.ndarray | int) -> np.ndarray:
        """KV bytes a step reads when its attention spans `n_kv` cells (sliding layers cap at their window)."""
        n_kv = np.asarray(n_kv, dtype=np.float64)
        per_cell = np.asarray(self.kv_bytes_per_cell, np.float64)
        swa = np.asarray(self.swa_layers, bool)
        full = per_cell[~swa].sum() * n_kv
        window = per_cell[swa].sum() * np.minimum(n_kv, self.sliding_window) if self.sliding_window else 0.0
        return full + window

    def bytes_per_step(self, n_kv: np.ndarray | int) -> np.ndarray:
        return self.weight_bytes_per_step + self.kv_bytes_read(n_kv)

    def to_meta(self) -> dict:
        """The byte counts for a trace's meta["model_bytes"], so that a trace analysed away from the model file
        keeps its bandwidth floor (cache types are applied again on reading)."""
        return {"path": self.path, "architecture": self.architecture, "n_layer": self.n_layer,
                "weight_bytes": self.weight_bytes, "weight_bytes_per_step": self.weight_bytes_per_step,
                "layer_bytes": list(self.layer_bytes), "swa_layers": list(self.swa_layers),
                "sliding_window": self.sliding_window,
                "kv_elements_per_cell": [list(pair) for pair in self.kv_elements_per_cell]}

    @classmethod
    def from_meta(cls, meta: dict, type_k: str = "f16", type_v: str = "f16") -> "ModelBytes":
        k_bytes, v_bytes = type_bytes(type_k), type_bytes(type_v)
        elements = tuple((int(k), int(v)) for k, v in meta["kv_elements_per_cell"])
        return cls(path=meta["path"], architecture=meta["architecture"], n_layer=int(meta["n_layer"]),
                   weight_bytes=int(meta["weight_bytes"]), weight_bytes_per_step=int(meta["weight_bytes_per_step"]),
                   layer_bytes=tuple(meta["layer_bytes"]), kv_elements_per_cell=elements,
                   kv_bytes_per_cell=tuple(int(round(k * k_bytes + v * v_bytes)) for k, v in elements),
                   swa_layers=tuple(bool(x) for x in meta["swa_layers"]),
                   sliding_window=int(meta["sliding_window"]), cache_types=(type_k, type_v))

    @property
    def kv_bytes_per_cell_total(self) -> int:
        """KV bytes of one cell over the full-attention layers: the growth of a step's reads per context cell."""
        return int(sum(b for b, swa in zip(self.kv_bytes_per_cell, self.swa_layers) if not swa))


def type_bytes(type_name: str) -> float:
    """Bytes per element of a ggml type ('f16', 'q8_0', ...)."""
    try:
        quant = GGMLQuantizationType[type_name.upper()]
    except KeyError:
        raise ModelFileError(f"unknown ggml type {type_name!r}") from None
    block, size = GGML_QUANT_SIZES[quant]
    return size / block


class _Header:
    """A forward-only reader over the file's header bytes."""

    def __init__(self, data: bytes):
        self.data = data
        self.at = 0

    def scalar(self, fmt: str):
        value, = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.scalar("<Q")
        text = self.data[self.at:self.at + length].decode("utf-8", errors="replace")
        self.at += length
        return text

    def skip_strings(self, count: int) -> None:
        for _ in range(count):
            length, = struct.unpack_from("<Q", self.data, self.at)
            self.at += 8 + length

    def value(self, vtype: int):
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype = self.scalar("<I")
            count = self.scalar("<Q")
            if etype == _STRING:
                self.skip_strings(count)  # vocabularies: nothing we need, only their length
                return None
            if etype not in _SCALAR:
                raise ModelFileError(f"unsupported GGUF array element type {etype}")
            dtype = np.dtype(_SCALAR[etype])
            values = np.frombuffer(self.data, dtype, count, self.at)
            self.at += dtype.itemsize * count
            return values.tolist() if count <= 4096 else None
        if vtype not in _SCALAR:
            raise ModelFileError(f"unsupported GGUF value type {vtype}")
        return self.scalar(_SCALAR[vtype])


def _read_header(path: Path) -> tuple[dict, list[tuple[str, list[int], int]]]:
    size = path.stat().st_size
    with open(path, "rb") as file:
        # the header is small next to the tensors; grow the window until it parses
        window = min(size, 16 << 20)
        while True:
            file.seek(0)
            data = file.read(window)
            try:
                return _parse_header(data, path)
            except struct.error:
                if window >= size:
                    raise ModelFileError(f"{path}: truncated GGUF header") from None
                window = min(size, window * 4)


def _parse_header(data: bytes, path: Path) -> tuple[dict, list[tuple[str, list[int], int]]]:
    if data[:4] != b"GGUF":
        raise ModelFileError(f"{path}: not a GGUF file")
    header = _Header(data)
    header.at = 4
    version = header.scalar("<I")
    if version < 2:
        raise ModelFileError(f"{path}: GGUF version {version} is too old")
    n_tensors = header.scalar("<Q")
    n_kv = header.scalar("<Q")
    metadata = {}
    for _ in range(n_kv):
        key = header.string()
        metadata[key] = header.value(header.scalar("<I"))
    tensors = []
    for _ in range(n_tensors):
        name = header.string()
        n_dims = header.scalar("<I")
        dims = [header.scalar("<Q") for _ in range(n_dims)]
        ggml_type = header.scalar("<I")
        header.scalar("<Q")  # offset
        tensors.append((name, dims, ggml_type))
    return metadata, tensors


def _tensor_bytes(dims: list[int], ggml_type: int) -> int:
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    return int(np.prod(dims, dtype=np.int64)) // block * size


def _per_layer(value, n_layer: int) -> list[int]:
    if isinstance(value, list):
        return [int(v) for v in value[:n_layer]] + [int(value[-1])] * max(0, n_layer - len(value))
    return [int(value or 0)] * n_layer


def _swa_layers(metadata: dict, arch: str, n_layer: int) -> tuple[list[bool], int]:
    window = int(metadata.get(f"{arch}.attention.sliding_window") or 0)
    if not window:
        return [False] * n_layer, 0
    pattern = metadata.get(f"{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, list):
        return [bool(p) for p in pattern[:n_layer]] + [False] * max(0, n_layer - len(pattern)), window
    n_pattern, dense_first = _DEFAULT_SWA_PATTERN.get(arch, (0, False))
    if isinstance(pattern, int):
        n_pattern = pattern
    if n_pattern == 0:
        return [True] * n_layer, window
    if dense_first:
        return [il % n_pattern != 0 for il in range(n_layer)], window
    return [il % n_pattern < n_pattern - 1 for il in range(n_layer)], window


@functools.lru_cache(maxsize=16)
def _model_bytes_cached(path: str, mtime_ns: int, type_k: str, type_v: str) -> ModelBytes:
    metadata, tensors = _read_header(Path(path))
    arch = str(metadata.get("general.architecture", ""))
    n_layer = int(metadata.get(f"{arch}.block_count") or 0)
    names = {name for name, _, _ in tensors}
    n_expert = int(metadata.get(f"{arch}.expert_count") or 0)
    n_expert_used = int(metadata.get(f"{arch}.expert_used_count") or 0)

    total = 0
    per_step = 0.0
    layers = [0] * n_layer
    for name, dims, ggml_type in tensors:
        nbytes = _tensor_bytes(dims, ggml_type)
        total += nbytes
        read = float(nbytes)
        if name == "token_embd.weight" and "output.weight" in names:
            read = 0.0  # a lookup reads one row per token; the output matrix is another tensor
        elif "_exps." in name and n_expert:
            read *= n_expert_used / n_expert  # a token reads only the experts routed to it
        per_step += read
        layer = _LAYER.match(name)
        if layer and int(layer.group(1)) < n_layer:
            layers[int(layer.group(1))] += nbytes

    head_kv = _per_layer(metadata.get(f"{arch}.attention.head_count_kv",
                                      metadata.get(f"{arch}.attention.head_count")), n_layer)
    n_head = _per_layer(metadata.get(f"{arch}.attention.head_count"), n_layer)
    n_embd = int(metadata.get(f"{arch}.embedding_length") or 0)
    key_length = [int(metadata.get(f"{arch}.attention.key_length") or (n_embd // h if h else 0)) for h in n_head]
    value_length = [int(metadata.get(f"{arch}.attention.value_length") or k) for k in key_length]
    k_bytes, v_bytes = type_bytes(type_k), type_bytes(type_v)
    elements = tuple((h * k, h * v) for h, k, v in zip(head_kv, key_length, value_length))
    kv_per_cell = tuple(int(round(k * k_bytes + v * v_bytes)) for k, v in elements)
    swa, window = _swa_layers(metadata, arch, n_layer)
    return ModelBytes(path=path, architecture=arch, n_layer=n_layer, weight_bytes=total,
                      weight_bytes_per_step=int(per_step), layer_bytes=tuple(layers),
                      kv_elements_per_cell=elements, kv_bytes_per_cell=kv_per_cell, swa_layers=tuple(swa),
                      sliding_window=window,
                      cache_types=(type_k, type_v), metadata={k: v for k, v in metadata.items() if v is not None})


def model_bytes(path: str | os.PathLike, type_k: str = "f16", type_v: str = "f16") -> ModelBytes:
    """Byte counts of the GGUF model at `path` with a KV cache of the given types."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    return _model_bytes_cached(str(path.resolve()), path.stat().st_mtime_ns, type_k.lower(), type_v.lower())


def flag_value(command: list[str], flags: tuple[str, ...]) -> str | None:
    """The value a command line gives one of `flags` (`-x V`, or `--long=V`), else None."""
    for i, arg in enumerate(command):
        for flag in flags:
            if arg == flag and i + 1 < len(command):
                return command[i + 1]
            if flag.startswith("--") and arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    return None


def _split_values(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(part) for part in re.split(r"[,/]", text) if part]
    except ValueError:
        return None


def command_model(command: list[str]) -> str | None:
    """The model file a llama.cpp program's command line names (-m / --model)."""
    return flag_value([str(arg) for arg in command], ("-m", "--model"))


def run_settings(meta: dict) -> dict:
    """What the analyses need to know about the run behind a trace, from what its maker recorded (a session's
    configurations, or a recorded program's command line): the model file, and per configuration label the KV
    cache types and the tensor split asked for (`configs`; `default` for steps of no known configuration)."""
    command = [str(arg) for arg in meta.get("command") or []]
    model = meta.get("model")
    if isinstance(model, dict):
        model = model.get("path")
    model = model or command_model(command)
    default = {
        "type_k": flag_value(command, ("-ctk", "--cache-type-k")) or "f16",
        "type_v": flag_value(command, ("-ctv", "--cache-type-v")) or "f16",
        "tensor_split": _split_values(flag_value(command, ("-ts", "--tensor-split"))),
    }
    configs = {}
    for config in meta.get("configs") or []:
        label = config.get("label")
        if label is None:
            continue
        configs[str(label)] = {"type_k": config.get("type_k") or "f16", "type_v": config.get("type_v") or "f16",
                               "tensor_split": config.get("tensor_split")}
    if len(configs) == 1:
        default = next(iter(configs.values()))
    return {"model": model, "default": default, "configs": configs}
