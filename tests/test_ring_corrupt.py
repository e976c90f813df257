"""No ring file, however damaged, makes the reader crash, hang or read out of bounds: only data or a RingError.

The corpus is made of rings recorded by the real writers (the standalone producer; a program opening its ring
lazily, with devices and strings; the engine's llama-bench), mutated: every header field at its boundary values,
damaged string entries and records, truncations at every section edge (deterministic, over 1,000 rings), plus
hypothesis' random edits. Reads run in this process under a deadline; truncated rings are read in a subprocess.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuscope.ring.reader import RingReader
from gpuscope.ring.schema import Field, load_schema
from ring_programs import read_everything, run_library_client, start_producer

SCHEMA = load_schema()
HEADER = SCHEMA.structs["gpuscope_ring_header"]
RECORD = SCHEMA.structs["gpuscope_record"]
HEADER_FIELDS = {field.name: field for field in HEADER.fields}
RECORD_FIELDS = {field.name: field for field in RECORD.fields}
BUSY = SCHEMA.constants["GPUSCOPE_SEQ_BUSY"]


# -- the recorded rings --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def producer_ring(tmp_path_factory) -> bytes:
    """Two producer threads that wrapped a 1024-record ring: marks with interned names."""
    path = tmp_path_factory.mktemp("ring") / "producer.ring"
    producer = start_producer(path, "--threads", "2", "--events", "3000", "--capacity", "1024")
    assert producer.wait(60) == 0, producer.stderr.read()
    return path.read_bytes()


@pytest.fixture(scope="module")
def library_ring(tmp_path_factory) -> bytes:
    """A program whose first hook call opened $GPUSCOPE_RING: two devices, interned names, one mark."""
    folder = tmp_path_factory.mktemp("ring")
    path = folder / "lazy.ring"
    run_library_client(folder, "lazy", env={**os.environ, "GPUSCOPE_RING": str(path),
                                            "GPUSCOPE_RING_CAPACITY": "64"})
    return path.read_bytes()


@pytest.fixture(scope="module")
def engine_ring(engine_build, tiny_model, tmp_path_factory) -> bytes:
    """llama-bench on the tiny model, wrapping a 64-record ring: the kinds the CPU engine's hooks write, a device."""
    path = tmp_path_factory.mktemp("ring") / "engine.ring"
    done = subprocess.run([str(engine_build.program("llama-bench")), "-m", str(tiny_model), "-p", "16", "-n", "4",
                           "-r", "1", "-t", "2"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "GPUSCOPE_RING": str(path), "GPUSCOPE_RING_CAPACITY": "64"})
    assert done.returncode == 0, done.stderr[-3000:]
    return path.read_bytes()


RINGS = ["producer_ring", "library_ring", "engine_ring"]


# -- mutations ------------------------------------------------------------------------------------------------

def with_value(data: bytes, field: Field, value: int, base: int = 0, index: int = 0) -> bytes:
    """`data` with element `index` of `field` (of a struct at `base`) set to `value`, wrapped to its width."""
    width = field.size // field.count
    at = base + field.offset + index * width
    out = bytearray(data)
    out[at:at + width] = (value % (1 << 8 * width)).to_bytes(width, "little")
    return bytes(out)


def read_value(data: bytes, field: Field, base: int = 0, index: int = 0) -> int:
    width = field.size // field.count
    at = base + field.offset + index * width
    return int.from_bytes(data[at:at + width], "little")


def boundary_values(current: int, width: int) -> set[int]:
    top = 1 << 8 * width
    return {v % top for v in (0, 1, 2, 3, 4095, 4096, 4097, current - 1, current + 1, current * 2, current // 2,
                              top // 2 - 1, top // 2, top - 1)} - {current}


def header_mutations(ring: bytes):
    """Every header field (each device name slot among them) at the values that break naive readers."""
    n_devices = read_value(ring, HEADER_FIELDS["n_devices"])
    for field in HEADER.fields:
        for index in range(min(field.count, max(n_devices, 1) + 1)):
            current = read_value(ring, field, index=index)
            for value in sorted(boundary_values(current, field.size // field.count)):
                yield f"{field.name}[{index}]={value}", with_value(ring, field, value, index=index)


def string_entries(ring: bytes) -> list[tuple[int, int]]:
    """(offset in the file, length) of every committed string entry after the reserved empty one."""
    offset = read_value(ring, HEADER_FIELDS["strings_offset"])
    used = read_value(ring, HEADER_FIELDS["strings_used"])
    entries, at = [], 8
    while at < used:
        length = int.from_bytes(ring[offset + at:offset + at + 4], "little")
        entries.append((offset + at, length))
        at += (4 + length + 1 + 3) // 4 * 4
    return entries


def string_mutations(ring: bytes):
    """Entry lengths that overrun, vanish or mislead; text that is not UTF-8; a missing terminator."""
    used = read_value(ring, HEADER_FIELDS["strings_used"])
    for at, length in string_entries(ring)[:12]:
        for bad_length in (0, 1, length + 1, length + 4, used, (1 << 32) - 1):
            out = bytearray(ring)
            out[at:at + 4] = bad_length.to_bytes(4, "little")
            yield f"string@{at} length {bad_length}", bytes(out)
        for position, byte in ((at + 4, 0xFF), (at + 4 + length, ord("x"))):
            out = bytearray(ring)
            out[position] = byte
            yield f"string@{at} byte {position}={byte}", bytes(out)


def record_mutations(ring: bytes):
    """Commit sequences from every state a slot can be in (and impossible ones), foreign kinds and devices,
    and the whole ring decoded as each kind."""
    capacity = read_value(ring, HEADER_FIELDS["capacity"])
    records = read_value(ring, HEADER_FIELDS["records_offset"])
    block = read_value(ring, HEADER_FIELDS["block_records"])
    newest = (read_value(ring, HEADER_FIELDS["block_cursor"]) - 1) % (capacity // block) * block
    size = SCHEMA.record_size
    for slot in sorted({0, 1, capacity // 2, capacity - 1, newest, newest + 1, newest + block - 1}):
        base = records + slot * size
        seq = read_value(ring, RECORD_FIELDS["seq"], base)
        for value in (0, seq | BUSY, seq + capacity, seq - 1, seq + 1, (1 << 64) - 1):
            yield f"slot {slot} seq={value}", with_value(ring, RECORD_FIELDS["seq"], value, base)
        for name, values in (("kind", (0, 999, 65535)), ("device", (-2, 64, 32767))):
            for value in values:
                yield f"slot {slot} {name}={value}", with_value(ring, RECORD_FIELDS[name], value, base)
    kinds = np.frombuffer(ring, np.uint16, capacity * size // 2, records)[RECORD_FIELDS["kind"].offset // 2::size // 2]
    for kind in sorted({0, *SCHEMA.kinds, max(SCHEMA.kinds) + 1}):
        out = bytearray(ring)
        view = np.frombuffer(out, np.uint16, capacity * size // 2, records)[RECORD_FIELDS["kind"].offset // 2::size // 2]
        view[kinds != 0] = kind
        yield f"every record as kind {kind}", bytes(out)
    out = bytearray(ring)
    payload = RECORD_FIELDS["payload"]
    slots = np.frombuffer(out, np.uint8, capacity * size, records).reshape(capacity, size)
    slots[:, payload.offset:payload.offset + payload.size] = 0xFF
    yield "every payload byte 0xff", bytes(out)


def truncations(ring: bytes):
    """The ring cut at every section edge (and grown past its declared size)."""
    strings = read_value(ring, HEADER_FIELDS["strings_offset"])
    used = read_value(ring, HEADER_FIELDS["strings_used"])
    records = read_value(ring, HEADER_FIELDS["records_offset"])
    capacity = read_value(ring, HEADER_FIELDS["capacity"])
    edges = {0, 1, 8, 64, HEADER.size - 1, HEADER.size, 4095, 4096, 4097, strings + 4, strings + used - 1,
             strings + used, records - 1, records, records + 1, records + 64, records + 64 * (capacity // 2),
             len(ring) - 64, len(ring) - 1}
    for length in sorted(edge for edge in edges if 0 <= edge < len(ring)):
        yield f"cut at {length}", ring[:length]
    for extra in (1, 4096):
        yield f"grown by {extra}", ring + bytes(extra)


FAMILIES = {"header": header_mutations, "strings": string_mutations, "records": record_mutations}
# A damaged header makes some rings unreadable; damaged strings and records never do: they read as placeholders,
# unknown kinds, skipped or lost records.
OUTCOMES = {"header": {"data", "ring error"}, "strings": {"data"}, "records": {"data"}}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("ring_name", RINGS)
def test_mutated_rings_give_data_or_a_ring_error(request, tmp_path, ring_name, family):
    ring = request.getfixturevalue(ring_name)
    path = tmp_path / "mutated.ring"
    outcomes = Counter()
    for label, data in FAMILIES[family](ring):
        path.write_bytes(data)
        try:
            outcomes[read_everything(path)] += 1
        except Exception as exc:
            raise AssertionError(f"{ring_name}, {label}: {type(exc).__name__}: {exc}") from exc
    assert set(outcomes) == OUTCOMES[family], outcomes


def test_corpus_size(producer_ring, library_ring, engine_ring):
    rings = (producer_ring, library_ring, engine_ring)
    sizes = {name: sum(1 for ring in rings for _ in mutate(ring)) for name, mutate in
             {**FAMILIES, "truncations": truncations}.items()}
    assert sum(sizes.values()) > 1000, sizes


TRUNCATED_READER = """
import json, sys
from ring_programs import read_everything
print(json.dumps([read_everything(path) for path in sys.argv[1:]]))
"""


@pytest.mark.parametrize("ring_name", RINGS)
def test_truncated_rings_are_refused_in_a_reader_subprocess(request, tmp_path, ring_name):
    """A reader that touched a byte past the end through a mapping would die of SIGBUS: this one lives."""
    paths, labels = [], []
    for index, (label, data) in enumerate(truncations(request.getfixturevalue(ring_name))):
        path = tmp_path / f"cut-{index}.ring"
        path.write_bytes(data)
        paths.append(str(path))
        labels.append(label)
    done = subprocess.run([sys.executable, "-c", TRUNCATED_READER, *paths], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).parent)
    assert done.returncode == 0, f"the reader's process ended with {done.returncode}: {done.stderr[-3000:]}"
    outcomes = dict(zip(labels, json.loads(done.stdout)))
    assert set(outcomes.values()) == {"ring error"}, outcomes  # every cut or grown ring disagrees with its header


def test_the_unmutated_rings_read_whole(producer_ring, library_ring, tmp_path):
    path = tmp_path / "ok.ring"
    path.write_bytes(producer_ring)
    with RingReader(path) as reader:  # full but for the unfilled rest of each thread's last block
        assert 1024 - 2 * reader.header.block_records <= len(reader.read_all()["mark"]) <= 1024
    path.write_bytes(library_ring)
    with RingReader(path) as reader:
        assert reader.device_names() == ["CUDA0", "CPU"]
        assert reader.read_all()["mark"]["name"].tolist() == ["hello"]


# -- random edits ---------------------------------------------------------------------------------------------

fuzz_settings = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def fuzz_read(tmp_path, data: bytes) -> None:
    path = tmp_path / "fuzzed.ring"
    path.write_bytes(data)
    read_everything(path)


@fuzz_settings
@given(edits=st.lists(st.tuples(st.integers(0, HEADER.size - 1), st.integers(0, 255)), min_size=1, max_size=12))
def test_random_header_bytes(producer_ring, tmp_path, edits):
    data = bytearray(producer_ring)
    for offset, value in edits:
        data[offset] = value
    fuzz_read(tmp_path, bytes(data))


@fuzz_settings
@given(edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=64))
def test_random_body_bytes(producer_ring, tmp_path, edits):
    data = bytearray(producer_ring)
    for position, value in edits:
        data[4096 + int(position * (len(data) - 4096))] = value
    fuzz_read(tmp_path, bytes(data))


@fuzz_settings
@given(values=st.dictionaries(st.sampled_from(sorted(HEADER_FIELDS)), st.integers(0, 2**64 - 1), min_size=1,
                              max_size=4))
def test_random_header_values(producer_ring, tmp_path, values):
    data = producer_ring
    for name, value in values.items():
        data = with_value(data, HEADER_FIELDS[name], value)
    fuzz_read(tmp_path, data)


@fuzz_settings
@given(slots=st.lists(st.tuples(st.integers(0, 1023), st.sampled_from(sorted(RECORD_FIELDS)),
                                st.integers(0, 2**64 - 1)), min_size=1, max_size=16))
def test_random_record_fields(producer_ring, tmp_path, slots):
    data = producer_ring
    records = read_value(data, HEADER_FIELDS["records_offset"])
    for slot, name, value in slots:
        data = with_value(data, RECORD_FIELDS[name], value, records + slot * SCHEMA.record_size,
                          index=value % RECORD_FIELDS[name].count)
    fuzz_read(tmp_path, data)


@fuzz_settings
@given(entry=st.integers(0, 1), length=st.integers(0, 2**32 - 1), text=st.binary(max_size=24))
def test_random_string_entries(producer_ring, tmp_path, entry, length, text):
    at, _ = string_entries(producer_ring)[entry]
    data = bytearray(producer_ring)
    data[at:at + 4] = length.to_bytes(4, "little")
    data[at + 4:at + 4 + len(text)] = text
    fuzz_read(tmp_path, bytes(data))
