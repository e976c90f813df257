"""GPUSCOPE_EMIT names a kind once and refuses, at compile time, a payload of any other type, in C and in C++
(the hooks sit in both); the reader refuses a GPUSCOPE_KINDS(X) list that pairs a kind with another's payload."""
import re
import subprocess

import pytest

from gpuscope.paths import native_hooks_dir
from gpuscope.ring.schema import load_schema, parse_headers

COMPILERS = {"c": ["gcc", "-std=c11", "-x", "c"], "c++": ["g++", "-std=c++17", "-x", "c++"]}


def _compile(language: str, body: str, tmp_path, *flags: str) -> subprocess.CompletedProcess:
    source = tmp_path / "emit.src"
    source.write_text(f'#include <string.h>\n#include "gpuscope_ring.h"\nvoid emit_all(void) {{\n{body}\n}}\n')
    return subprocess.run([*COMPILERS[language], "-fsyntax-only", *flags, f"-I{native_hooks_dir()}", str(source)],
                          capture_output=True, text=True)


@pytest.mark.parametrize("language", COMPILERS)
def test_every_kind_emits_its_own_payload(language, tmp_path):
    body = "\n".join(f"{{ gpuscope_ev_{name} ev; memset(&ev, 0, sizeof(ev)); GPUSCOPE_EMIT({name.upper()}, -1, ev); }}"
                     for name in load_schema().kinds.values())
    result = _compile(language, body, tmp_path, "-Wall", "-Wextra", "-Werror")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("language", COMPILERS)
@pytest.mark.parametrize("payload, named", [
    ("gpuscope_ev_buffer ev;", "gpuscope_ev_buffer"),        # another kind's payload
    ("uint8_t ev[GPUSCOPE_PAYLOAD_SIZE];", "uint8_t"),       # raw bytes of the right size
])
def test_a_payload_of_another_type_does_not_compile(language, payload, named, tmp_path):
    # No -Werror: a warning would let the record be written, so the refusal must be an error.
    result = _compile(language, f"{payload} memset(&ev, 0, sizeof(ev)); GPUSCOPE_EMIT(SYNC, -1, ev);", tmp_path)
    assert result.returncode != 0
    assert re.search(rf"error:.*{named}", result.stderr), result.stderr


@pytest.mark.parametrize("language", COMPILERS)
def test_the_kind_is_named_once(language, tmp_path):
    result = _compile(language, "gpuscope_ev_sync ev; memset(&ev, 0, sizeof(ev)); "
                                "GPUSCOPE_EMIT(GPUSCOPE_KIND_SYNC, -1, ev);", tmp_path)
    assert result.returncode != 0
    assert "GPUSCOPE_KIND_GPUSCOPE_KIND_SYNC" in result.stderr, result.stderr


def _headers() -> tuple[str, str]:
    return tuple((native_hooks_dir() / name).read_text() for name in ("gpuscope_events.h", "gpuscope_ring.h"))


@pytest.mark.parametrize("edit, message", [
    (("X(SYNC,             sync)", "X(SYNC,             buffer)"), "X(SYNC, sync) expected where it has X(SYNC, buffer)"),
    (("    X(COPY,             copy)              \\\n", ""), "X(COPY, copy) expected where it has X(META_PART, meta_part)"),
    ((" \\\n    X(META_PART,        meta_part)", ""), "X(META_PART, meta_part) expected where it has nothing"),
])
def test_a_kind_list_that_disagrees_with_the_enum_is_refused(edit, message):
    events, ring = _headers()
    assert edit[0] in events
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_headers(events.replace(edit[0], edit[1]), ring)
