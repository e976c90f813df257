"""Build the ring writer's standalone artifacts on demand with the system C compiler.

The engine compiles the writer into ggml-base; these standalone builds (a shared
library and two test programs) exist so the ring can be exercised and measured
without an engine. Builds land in a cache folder keyed by the sha256 of the
sources, compiler and flags, so an edit to any of them gives a fresh build.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import tempfile
from pathlib import Path

from gpuscope.errors import NativeBuildError
from gpuscope.log import say
from gpuscope.paths import cache_root, native_hooks_dir

__all__ = ["native_hooks_dir", "ring_library", "ring_tool"]

CFLAGS = ("-O2", "-std=c11", "-Wall", "-Wextra", "-fPIC", "-pthread")

LIBRARY_NAME = "libgpuscope_ring.so"
_RING_SOURCES = ("gpuscope_ring.c",)
_HEADERS = ("gpuscope_ring.h", "gpuscope_events.h", "tools/ring_file.h")
_TOOL_SOURCES = {
    "gpuscope-ring-producer": "tools/ring_producer.c",
    "gpuscope-ring-bench": "tools/ring_bench.c",
}


def ring_library() -> Path:
    """Path of libgpuscope_ring.so, compiled first if needed."""
    return _build(LIBRARY_NAME, _RING_SOURCES, ("-shared",))


def ring_tool(name: str) -> Path:
    """Path of a ring test program ('gpuscope-ring-producer', 'gpuscope-ring-bench'), compiled first if needed."""
    if name not in _TOOL_SOURCES:
        raise ValueError(f"unknown ring tool {name!r}; known: {', '.join(sorted(_TOOL_SOURCES))}")
    return _build(name, (_TOOL_SOURCES[name], *_RING_SOURCES), ())


def _compiler() -> list[str]:
    return shlex.split(os.environ.get("CC") or "cc")


def _build(output_name: str, sources: tuple[str, ...], extra_flags: tuple[str, ...]) -> Path:
    source_dir = native_hooks_dir()
    compiler = _compiler()
    flags = [*CFLAGS, *extra_flags]

    digest = hashlib.sha256()
    for part in (output_name, *compiler, *flags):
        digest.update(part.encode() + b"\0")
    for relative in (*sources, *_HEADERS):
        digest.update(relative.encode() + b"\0")
        digest.update((source_dir / relative).read_bytes())
    out_dir = cache_root() / "native" / digest.hexdigest()[:20]
    target = out_dir / output_name
    if target.is_file():
        return target

    out_dir.mkdir(parents=True, exist_ok=True)
    # A private temporary name, renamed into place: concurrent builders never
    # see (or run) a half-written file.
    fd, temporary = tempfile.mkstemp(prefix=f".{output_name}.", dir=out_dir)
    os.close(fd)
    command = [*compiler, *flags, *(str(source_dir / s) for s in sources), "-o", temporary]
    say(f"gpuscope: compiling {output_name} ...")
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except OSError as exc:
        os.unlink(temporary)
        raise NativeBuildError(
            f"cannot run the C compiler {compiler[0]!r} ({exc.strerror}): install one or point $CC at it"
        ) from exc
    if result.returncode != 0:
        os.unlink(temporary)
        raise NativeBuildError(
            f"compiling {output_name} failed (exit status {result.returncode}):\n"
            f"$ {shlex.join(command)}\n{result.stdout}{result.stderr}"
        )
    os.chmod(temporary, 0o755)
    os.replace(temporary, target)
    return target
