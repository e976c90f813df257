"""No ring file, however damaged, makes the reader crash or read out of bounds: only RingError comes out."""
from __future__ import annotations

import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuscope.errors import RingError
from gpuscope.ring.native import ring_tool
from gpuscope.ring.reader import RingReader


@pytest.fixture(scope="module")
def valid_ring(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("ring") / "valid.ring"
    subprocess.run([str(ring_tool("gpuscope-ring-producer")), "--path", str(path), "--threads", "2",
                    "--events", "3000", "--capacity", "1024"], check=True, capture_output=True)
    return path.read_bytes()


def read_everything(path) -> None:
    try:
        with RingReader(path) as reader:
            tables = reader.read_all()
            reader.status
            for frame in tables.values():
                frame.astype(str)  # resolve every category
    except RingError:
        pass


def test_valid_ring_reads(valid_ring, tmp_path):
    path = tmp_path / "ok.ring"
    path.write_bytes(valid_ring)
    with RingReader(path) as reader:
        assert len(reader.read_all()["mark"]) == 1024


fuzz_settings = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@fuzz_settings
@given(edits=st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=12))
def test_corrupt_header_bytes(valid_ring, tmp_path, edits):
    data = bytearray(valid_ring)
    for offset, value in edits:
        data[offset] = value
    path = tmp_path / "hdr.ring"
    path.write_bytes(data)
    read_everything(path)


@fuzz_settings
@given(edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=64))
def test_corrupt_body_bytes(valid_ring, tmp_path, edits):
    data = bytearray(valid_ring)
    for position, value in edits:
        data[4096 + int(position * (len(data) - 4096))] = value
    path = tmp_path / "body.ring"
    path.write_bytes(data)
    read_everything(path)


@fuzz_settings
@given(length=st.integers(0, 1 << 20))
def test_truncated(valid_ring, tmp_path, length):
    path = tmp_path / "short.ring"
    path.write_bytes(valid_ring[: min(length, len(valid_ring) - 1)])
    with pytest.raises(RingError):
        RingReader(path)


@fuzz_settings
@given(field=st.sampled_from(["capacity", "strings_offset", "strings_capacity", "records_offset", "file_size",
                              "write_cursor", "strings_used", "n_devices", "state", "abi_version"]),
       value=st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 4095, 4096, 2**32, 2**63])))
def test_impossible_header_values(valid_ring, tmp_path, field, value):
    from gpuscope.ring.schema import load_schema

    struct = load_schema().structs["gpuscope_ring_header"]
    target = next(f for f in struct.fields if f.name == field)
    data = bytearray(valid_ring)
    data[target.offset:target.offset + target.size] = (value % (1 << (8 * target.size))).to_bytes(target.size,
                                                                                                    "little")
    path = tmp_path / "field.ring"
    path.write_bytes(data)
    read_everything(path)
