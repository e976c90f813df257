"""Names for the raw ggml enums some payloads carry (ggml_type, ggml_op): their numbering belongs to the engine
version, so op names are read from the engine's own ggml.h when a trace is made and kept in its meta
(`engine.ggml_ops`); type names come from the `gguf` package (the GGUF file format fixes type numbers)."""
from __future__ import annotations

import functools
import re
from pathlib import Path

from gguf.constants import GGMLQuantizationType

from gpuscope.engine.source import pinned_source_dir

_OP_ENUM = re.compile(r"enum\s+ggml_op\s*\{(.*?)\};", re.S)
_MEMBER = re.compile(r"^\s*GGML_OP_(\w+)\s*(?:=\s*(\d+))?\s*,", re.M)


def type_name(value: int) -> str:
    """'f16', 'q8_0', ... for a ggml_type number; 255 is gpuscope's 'no tensor'."""
    if value == 255:
        return "none"
    try:
        return GGMLQuantizationType(int(value)).name.lower()
    except ValueError:
        return f"type{int(value)}"


def parse_op_names(header_text: str) -> dict[int, str]:
    """ggml_op value -> lower-case name, from the text of a ggml.h."""
    match = _OP_ENUM.search(header_text)
    if not match:
        return {}
    names: dict[int, str] = {}
    value = -1
    for member in _MEMBER.finditer(re.sub(r"//[^\n]*", "", match.group(1))):
        value = int(member.group(2)) if member.group(2) else value + 1
        if member.group(1) != "COUNT":
            names[value] = member.group(1).lower()
    return names


def _candidate_headers(engine_meta: dict) -> list[Path]:
    paths = []
    for key in ("source", "source_dir", "tree"):
        value = engine_meta.get(key)
        if isinstance(value, dict):  # a gpuscope build's meta: {"id", "path", "upstream"}
            value = value.get("path")
        if isinstance(value, str):
            paths.append(Path(value) / "ggml" / "include" / "ggml.h")
    program_dir = engine_meta.get("program_dir")
    if isinstance(program_dir, str):
        paths.append(Path(program_dir).parent / "include" / "ggml.h")
    paths.append(pinned_source_dir() / "ggml" / "include" / "ggml.h")
    return paths


@functools.lru_cache(maxsize=8)
def _op_names_of(path: str) -> dict[int, str]:
    return parse_op_names(Path(path).read_text(errors="replace"))


def engine_op_names(engine_meta: dict | None) -> dict[int, str]:
    """ggml_op names of an engine build, read from its own source's ggml.h (else the pinned engine's): called where
    a trace is made, with the engine on this machine."""
    for path in _candidate_headers(engine_meta or {}):
        if path.is_file():
            names = _op_names_of(str(path))
            if names:
                return names
    return {}


def op_names(engine_meta: dict | None) -> dict[int, str]:
    """ggml_op names as the trace recorded them (`engine.ggml_ops`); empty for a trace made without them."""
    recorded = (engine_meta or {}).get("ggml_ops")
    if not isinstance(recorded, dict):
        return {}
    return {int(value): str(name) for value, name in recorded.items() if str(value).lstrip("-").isdigit()}
