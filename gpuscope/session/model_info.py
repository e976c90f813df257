"""What a session needs to know about a GGUF model before loading it: architecture, training context, shape,
and whether its weights are synthetic (gpuscope's `synth_model` writes `gpuscope.synth.*` keys).

Reads only the key-value header, skipping array contents: the `gguf` package's reader parses every vocabulary
string and takes seconds on a 262k-token vocabulary.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from gpuscope.errors import ModelError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def gguf_metadata(path: str | os.PathLike) -> dict[str, object]:
    """Scalar and string keys of a GGUF file; arrays are given as their length."""
    path = Path(path)
    try:
        with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parse(data, path)
    except (OSError, ValueError, struct.error) as exc:
        raise ModelError(f"{path}: not a readable GGUF model ({exc})") from None


def _parse(data: mmap.mmap, path: Path) -> dict[str, object]:
    if data[:4] != b"GGUF":
        raise ValueError("no GGUF magic")
    version, _, kv_count = struct.unpack_from("<IQQ", data, 4)
    if version < 2:
        raise ValueError(f"GGUF version {version} is too old")
    offset = 24
    metadata: dict[str, object] = {}

    def string_at(at: int) -> tuple[str, int]:
        (length,) = struct.unpack_from("<Q", data, at)
        return data[at + 8:at + 8 + length].decode("utf-8", "replace"), at + 8 + length

    for _ in range(kv_count):
        key, offset = string_at(offset)
        (value_type,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if value_type in _SCALARS:
            (metadata[key],) = struct.unpack_from(_SCALARS[value_type], data, offset)
            offset += struct.calcsize(_SCALARS[value_type])
        elif value_type == _STRING:
            metadata[key], offset = string_at(offset)
        elif value_type == _ARRAY:
            element_type, count = struct.unpack_from("<IQ", data, offset)
            offset += 12
            metadata[key] = count
            if element_type == _STRING:
                for _ in range(count):
                    (length,) = struct.unpack_from("<Q", data, offset)
                    offset += 8 + length
            elif element_type in _SCALARS:
                offset += count * struct.calcsize(_SCALARS[element_type])
            else:
                raise ValueError(f"key {key}: arrays of type {element_type} are not readable here")
        else:
            raise ValueError(f"key {key}: unknown value type {value_type}")
    return metadata


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    name: str
    architecture: str
    n_ctx_train: int | None
    n_layer: int | None
    n_embd: int | None
    size_bytes: int
    synthetic: dict | None  # the synthetic shape and seed, None for real weights

    def to_meta(self) -> dict:
        return {"path": str(self.path), "name": self.name, "architecture": self.architecture,
                "n_ctx_train": self.n_ctx_train, "n_layer": self.n_layer, "n_embd": self.n_embd,
                "size_bytes": self.size_bytes, "synthetic": self.synthetic is not None,
                "synthetic_shape": self.synthetic}


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    meta = gguf_metadata(path)
    arch = str(meta.get("general.architecture", "unknown"))
    synthetic = None
    if "gpuscope.synth.shape" in meta:
        synthetic = {"shape": json.loads(str(meta["gpuscope.synth.shape"])),
                     "seed": meta.get("gpuscope.synth.seed"), "generator": meta.get("gpuscope.synth.generator")}

    def number(key: str) -> int | None:
        value = meta.get(f"{arch}.{key}")
        return int(value) if isinstance(value, (int, float)) else None

    return ModelInfo(path=path, name=str(meta.get("general.name", path.stem)), architecture=arch,
                     n_ctx_train=number("context_length"), n_layer=number("block_count"),
                     n_embd=number("embedding_length"), size_bytes=path.stat().st_size, synthetic=synthetic)
