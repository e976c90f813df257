"""The rocprofv3 importer on files that follow rocprofv3's documented schema (hand-written: see
tests/data/rocprofv3/README.md): CSV in two layouts, rocpd databases in both revisions of schema version 3."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from gpuscope.collectors.kernel_table import KERNEL_COLUMNS
from gpuscope.collectors.rocprof import read_rocpd, read_rocprof, read_rocprof_csv
from gpuscope.errors import ProfileFormatError
from gpuscope.trace.model import load_trace

DATA = Path(__file__).parent / "data" / "rocprofv3"
UUID = "_0000a1b2_c3d4_e5f6_0718_293a4b5c6d7e"

# the documented tables (rocpd_tables.sql), columns in their documented order; {times} differs by revision
_TABLES = {
    "rocpd_string": '"id" INTEGER PRIMARY KEY, "guid" TEXT, "string" TEXT',
    "rocpd_info_agent": '"id" INTEGER PRIMARY KEY, "guid" TEXT, "nid" INTEGER, "pid" INTEGER, "type" TEXT, '
                        '"absolute_index" INTEGER, "logical_index" INTEGER, "type_index" INTEGER, "uuid" INTEGER, '
                        '"name" TEXT, "generic_name" TEXT, "model_name" TEXT, "vendor_name" TEXT, '
                        '"product_name" TEXT, "extdata" JSONB',
    "rocpd_info_kernel_symbol": '"id" INTEGER PRIMARY KEY, "guid" TEXT, "nid" INTEGER, "pid" INTEGER, '
                                '"code_object_id" INTEGER, "kernel_name" TEXT, "display_name" TEXT, '
                                '"kernel_object" INTEGER, "kernarg_segment_size" INTEGER, '
                                '"kernarg_segment_alignment" INTEGER, "group_segment_size" INTEGER, '
                                '"private_segment_size" INTEGER, "sgpr_count" INTEGER, "arch_vgpr_count" INTEGER, '
                                '"accum_vgpr_count" INTEGER, "extdata" JSONB',
}
_INLINE = {
    "rocpd_kernel_dispatch": '"id" INTEGER PRIMARY KEY, "guid" TEXT, "nid" INTEGER, "pid" INTEGER, "tid" INTEGER, '
                             '"agent_id" INTEGER, "kernel_id" INTEGER, "dispatch_id" INTEGER, "queue_id" INTEGER, '
                             '"stream_id" INTEGER, "start" BIGINT, "end" BIGINT, "private_segment_size" INTEGER, '
                             '"group_segment_size" INTEGER, "workgroup_size_x" INTEGER, "workgroup_size_y" INTEGER, '
                             '"workgroup_size_z" INTEGER, "grid_size_x" INTEGER, "grid_size_y" INTEGER, '
                             '"grid_size_z" INTEGER, "region_name_id" INTEGER, "event_id" INTEGER, "extdata" JSONB',
    "rocpd_memory_copy": '"id" INTEGER PRIMARY KEY, "guid" TEXT, "nid" INTEGER, "pid" INTEGER, "tid" INTEGER, '
                         '"start" BIGINT, "end" BIGINT, "name_id" INTEGER, "dst_agent_id" INTEGER, '
                         '"dst_address" INTEGER, "src_agent_id" INTEGER, "src_address" INTEGER, "size" INTEGER, '
                         '"queue_id" INTEGER, "stream_id" INTEGER, "region_name_id" INTEGER, "event_id" INTEGER, '
                         '"extdata" JSONB',
}
_TIMESTAMPED = {
    "rocpd_track": '"id" INTEGER PRIMARY KEY, "guid" TEXT, "nid" INTEGER, "ppid" INTEGER, "pid" INTEGER, '
                   '"tid" INTEGER, "agent_id" INTEGER, "queue_id" INTEGER, "stream_id" INTEGER, "name_id" INTEGER, '
                   '"extdata" JSONB',
    "rocpd_timestamp": '"id" INTEGER PRIMARY KEY, "guid" TEXT, "value" BIGINT, "phase" INTEGER, "track_id" INTEGER',
    "rocpd_kernel_dispatch": '"id" INTEGER PRIMARY KEY, "guid" TEXT, "track_id" INTEGER, "kernel_id" INTEGER, '
                             '"dispatch_id" INTEGER, "start_id" INTEGER, "end_id" INTEGER, '
                             '"private_segment_size" INTEGER, "group_segment_size" INTEGER, '
                             '"workgroup_size_x" INTEGER, "workgroup_size_y" INTEGER, "workgroup_size_z" INTEGER, '
                             '"grid_size_x" INTEGER, "grid_size_y" INTEGER, "grid_size_z" INTEGER, '
                             '"region_name_id" INTEGER, "event_id" INTEGER, "extdata" JSONB',
    "rocpd_memory_copy": '"id" INTEGER PRIMARY KEY, "guid" TEXT, "track_id" INTEGER, "start_id" INTEGER, '
                         '"end_id" INTEGER, "name_id" INTEGER, "dst_agent_id" INTEGER, "dst_address" INTEGER, '
                         '"src_agent_id" INTEGER, "src_address" INTEGER, "size" INTEGER, "region_name_id" INTEGER, '
                         '"event_id" INTEGER, "extdata" JSONB',
}
MMVQ = "void mul_mat_vec_q<(ggml_type)12, 1, false>(void const*, void const*, int const*, float*, unsigned int)"
FA_TILE = "void flash_attn_tile<256, 256, 32, false>(char const*, char const*, char const*, char const*)"
# (agent, kernel symbol, stream, start, end, grid x, workgroup x)
DISPATCHES = [(2, 1, 1, 7_000_000_000, 7_000_004_000, 262144, 128), (2, 2, 1, 7_000_004_500, 7_000_009_000, 512, 256),
              (3, 1, 2, 7_000_010_000, 7_000_013_000, 262144, 128)]
# (src agent, dst agent, stream, start, end, bytes)
COPIES = [(1, 2, 1, 6_999_990_000, 6_999_999_000, 4096), (2, 3, 2, 7_000_009_100, 7_000_009_900, 65536)]


def _rocpd(path: Path, timestamped: bool) -> Path:
    """A rocpd database as rocprofv3 writes one: uuid-suffixed tables and the views named without the suffix."""
    connection = sqlite3.connect(path)
    tables = {**_TABLES, **(_TIMESTAMPED if timestamped else _INLINE)}
    for name, columns in tables.items():
        connection.execute(f"CREATE TABLE `{name}{UUID}` ({columns})")
        connection.execute(f"CREATE VIEW `{name}` AS SELECT * FROM `{name}{UUID}`")
    connection.execute(f"CREATE TABLE `rocpd_metadata{UUID}` (id INTEGER PRIMARY KEY, tag TEXT, value TEXT)")
    connection.execute(f"INSERT INTO `rocpd_metadata{UUID}` (tag, value) VALUES ('schema_version', '3')")
    strings = ["MEMORY_COPY_HOST_TO_DEVICE", "MEMORY_COPY_DEVICE_TO_DEVICE"]
    connection.executemany(f"INSERT INTO `rocpd_string{UUID}` VALUES (?, 'g', ?)", enumerate(strings, 1))
    agents = [(1, "CPU", 0, 0), (2, "GPU", 1, 0), (3, "GPU", 2, 1)]  # id, type, absolute_index, type_index
    connection.executemany(f"INSERT INTO `rocpd_info_agent{UUID}` VALUES (?, 'g', 1, 1, ?, ?, ?, ?, 0, ?, 'gfx942', "
                           "'gfx942', 'AMD', 'AMD Instinct MI300X', '{}')",
                           [(i, t, a, a, ti, f"agent{a}") for i, t, a, ti in agents])
    connection.executemany(f"INSERT INTO `rocpd_info_kernel_symbol{UUID}` VALUES (?, 'g', 1, 1, 1, ?, ?, 0, 64, 8, "
                           "?, 0, 32, ?, 0, '{}')", [(1, "mmvq", MMVQ, 512, 64), (2, "fa_tile", FA_TILE, 4096, 96)])
    if timestamped:
        tracks = {}
        for agent, _, stream, *_ in DISPATCHES + [(c[1], 0, c[2]) for c in COPIES]:
            tracks.setdefault((agent, stream), len(tracks) + 1)
        connection.executemany(f"INSERT INTO `rocpd_track{UUID}` VALUES (?, 'g', 1, 0, 1, 1, ?, ?, ?, NULL, '{{}}')",
                               [(i, agent, stream, stream) for (agent, stream), i in tracks.items()])
        stamps = []

        def stamp(value, phase, track):
            stamps.append((len(stamps) + 1, value, phase, track))
            return len(stamps)
        for i, (agent, symbol, stream, start, end, grid, block) in enumerate(DISPATCHES, 1):
            track = tracks[(agent, stream)]
            connection.execute(f"INSERT INTO `rocpd_kernel_dispatch{UUID}` VALUES (?, 'g', ?, ?, ?, ?, ?, 0, 0, ?, 1, "
                               "1, ?, 1, 1, NULL, NULL, '{}')",
                               (i, track, symbol, i, stamp(start, 1, track), stamp(end, 2, track), block, grid))
        for i, (src, dst, stream, start, end, size) in enumerate(COPIES, 1):
            track = tracks[(dst, stream)]
            connection.execute(f"INSERT INTO `rocpd_memory_copy{UUID}` VALUES (?, 'g', ?, ?, ?, ?, ?, 0, ?, 0, ?, "
                               "NULL, NULL, '{}')", (i, track, stamp(start, 1, track), stamp(end, 2, track), i, dst,
                                                     src, size))
        connection.executemany(f"INSERT INTO `rocpd_timestamp{UUID}` VALUES (?, 'g', ?, ?, ?)", stamps)
    else:
        connection.executemany(f"INSERT INTO `rocpd_kernel_dispatch{UUID}` VALUES (?, 'g', 1, 1, 7, ?, ?, ?, ?, ?, "
                               "?, ?, 0, 0, ?, 1, 1, ?, 1, 1, NULL, NULL, '{}')",
                               [(i, agent, symbol, i, stream, stream, start, end, block, grid)
                                for i, (agent, symbol, stream, start, end, grid, block) in enumerate(DISPATCHES, 1)])
        connection.executemany(f"INSERT INTO `rocpd_memory_copy{UUID}` VALUES (?, 'g', 1, 1, 7, ?, ?, ?, ?, 0, ?, 0, "
                               "?, ?, ?, NULL, NULL, '{}')",
                               [(i, start, end, i, dst, src, size, stream, stream)
                                for i, (src, dst, stream, start, end, size) in enumerate(COPIES, 1)])
    connection.commit()
    connection.close()
    return path


def test_kernel_and_copy_csv():
    kernels = read_rocprof_csv(DATA / "1234_kernel_trace.csv", DATA / "1234_memory_copy_trace.csv")
    assert list(kernels.columns) == list(KERNEL_COLUMNS)
    assert kernels["ts_ns"].is_monotonic_increasing
    assert (kernels["category"] == "kernel").sum() == 4 and (kernels["category"] == "memcpy").sum() == 3
    k = kernels[kernels["category"] == "kernel"].reset_index(drop=True)
    assert list(k["kernel"]) == ["rms_norm_f32", "mul_mat_vec_q", "flash_attn_ext_vec", "mul_mat_vec_q"]
    assert list(k["family"]) == ["norm", "matmul", "flash_attn", "matmul"]
    assert k.loc[2, "fa_kind"] == "vec"
    # agents 2 and 3 ran kernels: GPUs 0 and 1
    assert list(k["device"]) == ["ROCm0", "ROCm0", "ROCm0", "ROCm1"]
    assert list(k["duration_ns"]) == [900, 8000, 3000, 7000]
    assert list(k["stream"]) == [3, 3, 3, 5]
    assert (k.loc[1, "grid_x"], k.loc[1, "block_x"], k.loc[1, "registers"], k.loc[1, "shared_memory_bytes"]) == \
        (262144, 128, 64, 512)
    c = kernels[kernels["category"] == "memcpy"].reset_index(drop=True)
    assert list(c["copy_kind"]) == ["HtoD", "DtoD", "DtoH"]
    assert list(c["device"]) == ["ROCm0", "ROCm1", "ROCm1"] and set(c["family"]) == {"copy"}


def test_older_csv_layout_and_offset():
    kernels = read_rocprof(DATA / "old_kernel_trace.csv", offset_ns=1000)
    assert list(kernels["kernel"]) == ["rope_neox", "soft_max_f32"]
    assert list(kernels["family"]) == ["rope", "softmax"]
    assert kernels["ts_ns"].iloc[0] == 671599758568 - 1000
    assert list(kernels["device"]) == ["ROCm0", "ROCm0"]  # the one agent that ran kernels
    assert list(kernels["shared_memory_bytes"]) == [0, 1024]
    assert kernels["stream"].iloc[0] == 139690710949888  # no Stream_Id: the queue


@pytest.mark.parametrize("timestamped", [False, True], ids=["start-end-columns", "timestamp-table"])
def test_rocpd_database(tmp_path, timestamped):
    kernels = read_rocpd(_rocpd(tmp_path / "results.db", timestamped))
    k = kernels[kernels["category"] == "kernel"].reset_index(drop=True)
    assert list(k["kernel"]) == ["mul_mat_vec_q", "flash_attn_tile", "mul_mat_vec_q"]
    assert list(k["fa_kind"]) == ["", "tile", ""]
    assert list(k["device"]) == ["ROCm0", "ROCm0", "ROCm1"]
    assert list(k["duration_ns"]) == [4000, 4500, 3000]
    assert list(k["grid_x"]) == [262144, 512, 262144] and list(k["block_x"]) == [128, 256, 128]
    assert list(k["registers"]) == [64, 96, 64] and list(k["source"].unique()) == ["rocprofv3-rocpd"]
    c = kernels[kernels["category"] == "memcpy"].reset_index(drop=True)
    assert list(c["copy_kind"]) == ["HtoD", "PtoP"] and list(c["bytes"]) == [4096, 65536]
    assert list(c["device"]) == ["ROCm0", "ROCm1"]
    # the same database through a folder
    assert len(read_rocprof(tmp_path)) == 5


def test_bad_inputs_are_named(tmp_path):
    (tmp_path / "x_kernel_trace.csv").write_text('"Kind","Name"\n"KERNEL_DISPATCH","k"\n')
    with pytest.raises(ProfileFormatError, match="missing"):
        read_rocprof(tmp_path / "x_kernel_trace.csv")
    (tmp_path / "other.db").write_bytes(b"not sqlite at all, just bytes" * 10)
    with pytest.raises(ProfileFormatError, match="not a"):
        read_rocpd(tmp_path / "other.db")
    empty = sqlite3.connect(tmp_path / "empty.db")
    empty.execute("create table t (x)")
    empty.close()
    with pytest.raises(ProfileFormatError, match="not a rocpd database"):
        read_rocpd(tmp_path / "empty.db")


def test_cli_import_writes_a_trace(tmp_path):
    done = subprocess.run([sys.executable, "-m", "gpuscope.cli", "import-rocprof", str(DATA), "-o",
                           str(tmp_path / "amd.trace")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    trace = load_trace(tmp_path / "amd.trace")
    assert len(trace.tables["kernels"]) == 7
    assert isinstance(trace.tables["kernels"], pd.DataFrame)
