"""What a trace records about its run when it is made, so that it stands alone: the analyses read only the trace,
never a file it names (a model that may be gone, an engine source another machine lacks) or the machine they run on.

- `model_bytes`: the model's byte profile (weights read per step, bytes per layer, KV elements per cell), from the
  GGUF header; the cache types of each configuration are applied when it is read.
- `engine.ggml_ops`: the engine's ggml_op names by value (op numbers belong to the engine version).
- `machine`: the system, CPU, memory and GPUs with their driver.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import re
from pathlib import Path

from gpuscope.engine.accelerators import nvidia_gpu_facts
from gpuscope.engine.source import pinned_source_dir
from gpuscope.trace.model_bytes import ModelFileError, model_bytes


def program_engine_meta(program: str | os.PathLike, env: dict | None = None) -> dict:
    """The build's own metadata, from the program's build folder or the one llama-cpp-python loads from (the
    `LLAMA_CPP_LIB_PATH` of its environment)."""
    resolved = Path(program).resolve()  # only to find the build folder; the program runs as given
    folders = [resolved.parent, resolved.parent.parent]
    if (env or {}).get("LLAMA_CPP_LIB_PATH"):
        library_folder = Path(env["LLAMA_CPP_LIB_PATH"])
        folders += [library_folder, library_folder.parent]
    for folder in folders:
        meta_file = folder / "gpuscope-build.json"
        if meta_file.is_file():
            return json.loads(meta_file.read_text())
    return {"program_dir": str(Path(program).parent)}


def standalone_meta(model: str | os.PathLike | None, engine: dict | None) -> dict:
    """Meta entries for a trace of a run of `model` on the engine build `engine` (its build meta)."""
    facts: dict = {"machine": machine()}
    engine = dict(engine or {})
    ops = engine_op_names(engine)
    if ops:
        engine["ggml_ops"] = {str(value): name for value, name in sorted(ops.items())}
    facts["engine"] = engine
    if model:
        try:
            facts["model_bytes"] = model_bytes(model).to_meta()
        except (ModelFileError, OSError, ValueError) as exc:
            facts["model_bytes_error"] = f"{model}: {exc}"
    return facts


@functools.cache
def machine() -> dict:
    """This machine: system, CPU model and cores, memory, and each NVIDIA GPU with its driver."""
    facts = {"system": platform.platform(), "cpu": _cpu_model(), "cpu_cores": os.cpu_count(),
             "memory_bytes": _memory_bytes()}
    gpus = nvidia_gpu_facts()
    if gpus:
        facts["gpu"] = "; ".join(gpus)
    return {key: value for key, value in facts.items() if value is not None}


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


_OP_ENUM = re.compile(r"enum\s+ggml_op\s*\{(.*?)\};", re.S)


_MEMBER = re.compile(r"^\s*GGML_OP_(\w+)\s*(?:=\s*(\d+))?\s*,", re.M)


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
