"""Import rocprofv3 output (AMD GPUs, rocprofiler-sdk) into the `kernels` table.

Where the engine runs outside gpuscope's process on AMD GPUs (llama-server under `rocprofv3 --kernel-trace
--memory-copy-trace`), rocprofv3 writes either CSV files or a SQLite `rocpd` database (its default format since
ROCm 7). Both become the same kernels table as torch's profiler gives (gpuscope.collectors.kernel_table).

Built from rocprofv3's documented output schema, not yet run against output of a real ROCm machine:
  CSV   <prefix>kernel_trace.csv: Kind, Agent_Id, Queue_Id, [Stream_Id,] [Thread_Id,] Dispatch_Id, Kernel_Id,
        Kernel_Name, Correlation_Id, Start_Timestamp, End_Timestamp, then LDS_Block_Size / Scratch_Size /
        VGPR_Count / Accum_VGPR_Count / SGPR_Count (newer) or Private_Segment_Size / Group_Segment_Size (older),
        Workgroup_Size_X/Y/Z, Grid_Size_X/Y/Z
        <prefix>memory_copy_trace.csv: Kind, Direction, [Stream_Id,] Source_Agent_Id, Destination_Agent_Id,
        Correlation_Id, Start_Timestamp, End_Timestamp
  rocpd rocpd_kernel_dispatch, rocpd_memory_copy, rocpd_info_agent, rocpd_info_kernel_symbol, rocpd_string (the
        views rocprofv3 creates over its uuid-suffixed tables), with start/end either as columns or as ids into
        rocpd_timestamp (both revisions of schema version 3)
Agent ids: `GPU N` (type-relative) is GPU N; `Agent N` or a bare number are ranked among the agents that ran
kernels (CSV) or taken from rocpd_info_agent's type_index (rocpd). Devices are named as ggml's HIP backend names
them: ROCm0, ROCm1, ...

Timestamps are rocprofiler-sdk's host clock in ns. Attached to a gpuscope trace they are used as they are, i.e.
assumed to be on the ring's CLOCK_MONOTONIC; give `offset_ns` (profile clock - CLOCK_MONOTONIC) when they are not.
"""
from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd

from gpuscope.collectors.kernel_table import empty_kernels, kernel_frame
from gpuscope.errors import ProfileFormatError

_KERNEL_REQUIRED = {"Kind", "Agent_Id", "Queue_Id", "Kernel_Name", "Correlation_Id", "Start_Timestamp",
                    "End_Timestamp", "Workgroup_Size_X", "Grid_Size_X"}
_COPY_REQUIRED = {"Kind", "Direction", "Source_Agent_Id", "Destination_Agent_Id", "Correlation_Id",
                  "Start_Timestamp", "End_Timestamp"}
_DIRECTIONS = {"MEMORY_COPY_HOST_TO_DEVICE": "HtoD", "MEMORY_COPY_DEVICE_TO_HOST": "DtoH",
               "MEMORY_COPY_DEVICE_TO_DEVICE": "DtoD", "MEMORY_COPY_HOST_TO_HOST": "HtoH",
               "MEMORY_COPY_PEER_TO_PEER": "PtoP"}


def _agent_number(value) -> tuple[str, int]:
    """('gpu' | 'agent', number) from `GPU 3`, `Agent 7` or 7."""
    text = str(value).strip()
    found = re.fullmatch(r"(?i)(gpu|agent|cpu)?[\s-]*(\d+)", text)
    if not found:
        raise ProfileFormatError(f"unreadable agent id {value!r}")
    return (found.group(1) or "agent").lower(), int(found.group(2))


def _csv(path: Path, required: set[str]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ProfileFormatError(f"{path}: not a readable CSV ({exc})") from None
    missing = required - set(frame.columns)
    if missing:
        raise ProfileFormatError(f"{path}: not a rocprofv3 trace CSV, columns {sorted(missing)} are missing (it has "
                                 f"{list(frame.columns)})")
    return frame


def _optional(frame: pd.DataFrame, *names: str) -> pd.Series:
    for name in names:
        if name in frame.columns:
            return frame[name]
    return pd.Series([None] * len(frame), index=frame.index)


def read_rocprof_csv(kernel_trace: str | Path | None, memory_copy_trace: str | Path | None = None, *,
                     offset_ns: int = 0) -> pd.DataFrame:
    """The kernels table from rocprofv3's kernel_trace.csv and/or memory_copy_trace.csv."""
    parts = []
    kernels = _csv(Path(kernel_trace), _KERNEL_REQUIRED) if kernel_trace else None
    copies = _csv(Path(memory_copy_trace), _COPY_REQUIRED) if memory_copy_trace else None
    gpu_index = _gpu_ranks([*([] if kernels is None else kernels["Agent_Id"].tolist())])

    def device_of(agent) -> int:
        kind, number = _agent_number(agent)
        return number if kind == "gpu" else gpu_index.get(number, number)

    if kernels is not None and len(kernels):
        kernels = kernels[kernels["Kind"].astype(str) == "KERNEL_DISPATCH"]
        devices = [device_of(a) for a in kernels["Agent_Id"]]
        stream = _optional(kernels, "Stream_Id").fillna(kernels["Queue_Id"])
        parts.append({
            "ts_ns": kernels["Start_Timestamp"].astype(np.int64) - offset_ns,
            "duration_ns": (kernels["End_Timestamp"] - kernels["Start_Timestamp"]).astype(np.int64),
            "device": [f"ROCm{d}" for d in devices], "device_index": devices, "stream": stream.astype(np.int64),
            "category": "kernel", "name": kernels["Kernel_Name"].astype(str),
            "grid_x": kernels["Grid_Size_X"], "grid_y": _optional(kernels, "Grid_Size_Y"),
            "grid_z": _optional(kernels, "Grid_Size_Z"), "block_x": kernels["Workgroup_Size_X"],
            "block_y": _optional(kernels, "Workgroup_Size_Y"), "block_z": _optional(kernels, "Workgroup_Size_Z"),
            "registers": _optional(kernels, "VGPR_Count", "Arch_VGPR_Count"),
            "shared_memory_bytes": _optional(kernels, "LDS_Block_Size", "Group_Segment_Size"),
            "correlation": kernels["Correlation_Id"], "source": "rocprofv3-csv",
        })
    if copies is not None and len(copies):
        copies = copies[copies["Kind"].astype(str) == "MEMORY_COPY"]
        direction = copies["Direction"].astype(str)
        # a copy belongs to the GPU end: the destination unless it goes to the host
        gpu_end = np.where(direction.str.endswith("_TO_HOST"), copies["Source_Agent_Id"],
                           copies["Destination_Agent_Id"])
        devices = [device_of(a) for a in gpu_end]
        parts.append({
            "ts_ns": copies["Start_Timestamp"].astype(np.int64) - offset_ns,
            "duration_ns": (copies["End_Timestamp"] - copies["Start_Timestamp"]).astype(np.int64),
            "device": [f"ROCm{d}" for d in devices], "device_index": devices,
            "stream": _optional(copies, "Stream_Id").fillna(-1).astype(np.int64), "category": "memcpy",
            "name": direction, "bytes": _optional(copies, "Size", "Bytes"),
            "copy_kind": direction.map(_DIRECTIONS), "correlation": copies["Correlation_Id"],
            "source": "rocprofv3-csv",
        })
    return _combine(parts)


def _gpu_ranks(agents: list) -> dict[int, int]:
    """Absolute / relative agent numbers of the agents that ran kernels -> GPU ordinal (ascending order)."""
    numbers = sorted({n for kind, n in map(_agent_number, agents) if kind != "gpu"})
    return {number: rank for rank, number in enumerate(numbers)}


def _combine(parts: list[dict]) -> pd.DataFrame:
    frames = [kernel_frame(part) for part in parts if len(part["ts_ns"])]
    if not frames:
        return empty_kernels()
    return pd.concat(frames, ignore_index=True).sort_values(["ts_ns", "device_index", "stream"], kind="stable",
                                                            ignore_index=True)


def find_csv(folder: str | Path) -> tuple[Path | None, Path | None]:
    """(kernel_trace.csv, memory_copy_trace.csv) in a rocprofv3 output folder (any prefix, e.g. 1234_)."""
    folder = Path(folder)
    kernel = sorted(folder.rglob("*kernel_trace.csv"))
    copy = sorted(folder.rglob("*memory_copy_trace.csv"))
    return (kernel[0] if kernel else None), (copy[0] if copy else None)


# -- rocpd -------------------------------------------------------------------------------------------------------

def read_rocpd(path: str | Path, *, offset_ns: int = 0) -> pd.DataFrame:
    """The kernels table from a rocpd SQLite database (kernel dispatches and memory copies)."""
    path = Path(path)
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        names = {row[0] for row in connection.execute("select name from sqlite_master where type in "
                                                      "('table', 'view')")}
    except sqlite3.DatabaseError as exc:
        raise ProfileFormatError(f"{path}: not a SQLite database ({exc})") from None
    try:
        needed = {"rocpd_kernel_dispatch", "rocpd_info_agent", "rocpd_info_kernel_symbol"}
        if not needed <= names:
            raise ProfileFormatError(f"{path}: not a rocpd database (no {sorted(needed - names)})")
        parts = [_rocpd_kernels(connection, offset_ns)]
        if "rocpd_memory_copy" in names:
            parts.append(_rocpd_copies(connection, offset_ns))
    finally:
        connection.close()
    return _combine(parts)


def _columns(connection, table: str) -> set[str]:
    return {row[1] for row in connection.execute(f"pragma table_info(`{table}`)")}


def _times(connection, table: str, alias: str) -> tuple[str, str]:
    """SQL for (start, end) of `table`: inline columns, or ids into rocpd_timestamp (the later revision)."""
    columns = _columns(connection, table)
    if {"start", "end"} <= columns:
        return f'{alias}."start"', f'{alias}."end"'
    if {"start_id", "end_id"} <= columns:
        return (f"(select value from rocpd_timestamp where id = {alias}.start_id)",
                f"(select value from rocpd_timestamp where id = {alias}.end_id)")
    raise ProfileFormatError(f"{table} has neither start/end nor start_id/end_id columns: unknown rocpd revision")


def _agent_join(connection, table: str, alias: str, agent_column: str = "agent_id") -> str:
    """How to reach a dispatch's agent: its own agent_id, or (later revision) through its track."""
    if agent_column in _columns(connection, table):
        return f"{alias}.{agent_column}"
    return f"(select agent_id from rocpd_track where id = {alias}.track_id)"


def _stream_sql(connection, table: str, alias: str) -> str:
    columns = _columns(connection, table)
    if "stream_id" in columns:
        return f"coalesce({alias}.stream_id, {alias}.queue_id, -1)" if "queue_id" in columns else \
            f"coalesce({alias}.stream_id, -1)"
    return (f"coalesce((select stream_id from rocpd_track where id = {alias}.track_id), "
            f"(select queue_id from rocpd_track where id = {alias}.track_id), -1)")


def _rocpd_kernels(connection, offset_ns: int) -> dict:
    start, end = _times(connection, "rocpd_kernel_dispatch", "K")
    agent = _agent_join(connection, "rocpd_kernel_dispatch", "K")
    query = f"""
        select {start} as start, {end} as "end", A.type_index as gpu, {_stream_sql(connection,
        "rocpd_kernel_dispatch", "K")} as stream, coalesce(S.display_name, S.kernel_name) as name,
        K.grid_size_x, K.grid_size_y, K.grid_size_z, K.workgroup_size_x, K.workgroup_size_y, K.workgroup_size_z,
        S.arch_vgpr_count as registers, coalesce(K.group_segment_size, S.group_segment_size) as lds,
        K.dispatch_id as correlation
        from rocpd_kernel_dispatch K
        join rocpd_info_agent A on A.id = {agent}
        join rocpd_info_kernel_symbol S on S.id = K.kernel_id
        order by start"""
    frame = pd.read_sql_query(query, connection)
    return {
        "ts_ns": frame["start"].astype(np.int64) - offset_ns,
        "duration_ns": (frame["end"] - frame["start"]).astype(np.int64),
        "device": [f"ROCm{int(g)}" for g in frame["gpu"]], "device_index": frame["gpu"].astype(np.int64),
        "stream": frame["stream"].astype(np.int64), "category": "kernel", "name": frame["name"].astype(str),
        "grid_x": frame["grid_size_x"], "grid_y": frame["grid_size_y"], "grid_z": frame["grid_size_z"],
        "block_x": frame["workgroup_size_x"], "block_y": frame["workgroup_size_y"],
        "block_z": frame["workgroup_size_z"], "registers": frame["registers"], "shared_memory_bytes": frame["lds"],
        "correlation": frame["correlation"], "source": "rocprofv3-rocpd",
    }


def _rocpd_copies(connection, offset_ns: int) -> dict:
    start, end = _times(connection, "rocpd_memory_copy", "M")
    query = f"""
        select {start} as start, {end} as "end", src.type as src_type, src.type_index as src_index,
        dst.type as dst_type, dst.type_index as dst_index, {_stream_sql(connection, "rocpd_memory_copy", "M")}
        as stream, N.string as name, M.size as bytes
        from rocpd_memory_copy M
        join rocpd_info_agent src on src.id = M.src_agent_id
        join rocpd_info_agent dst on dst.id = M.dst_agent_id
        join rocpd_string N on N.id = M.name_id
        order by start"""
    frame = pd.read_sql_query(query, connection)
    gpu = np.where(frame["dst_type"] == "GPU", frame["dst_index"], frame["src_index"]).astype(np.int64)
    kinds = [f"{'D' if s == 'GPU' else 'H'}to{'D' if d == 'GPU' else 'H'}"
             for s, d in zip(frame["src_type"], frame["dst_type"])]
    kinds = ["PtoP" if k == "DtoD" and s != d else k for k, s, d in zip(kinds, frame["src_index"], frame["dst_index"])]
    return {
        "ts_ns": frame["start"].astype(np.int64) - offset_ns,
        "duration_ns": (frame["end"] - frame["start"]).astype(np.int64),
        "device": [f"ROCm{g}" for g in gpu], "device_index": gpu, "stream": frame["stream"].astype(np.int64),
        "category": "memcpy", "name": frame["name"].astype(str), "bytes": frame["bytes"], "copy_kind": kinds,
        "source": "rocprofv3-rocpd",
    }


def read_rocprof(path: str | Path, *, offset_ns: int = 0) -> pd.DataFrame:
    """A rocpd database (.db), a kernel_trace.csv / memory_copy_trace.csv, or a rocprofv3 output folder."""
    path = Path(path)
    if path.is_dir():
        kernel, copy = find_csv(path)
        databases = sorted(path.rglob("*.db"))
        if kernel is None and copy is None:
            if databases:
                return read_rocpd(databases[0], offset_ns=offset_ns)
            raise ProfileFormatError(f"{path}: no rocprofv3 kernel_trace.csv, memory_copy_trace.csv or .db in it")
        return read_rocprof_csv(kernel, copy, offset_ns=offset_ns)
    if not path.is_file():
        raise ProfileFormatError(f"{path}: no such file")
    if path.suffix == ".db":
        return read_rocpd(path, offset_ns=offset_ns)
    if path.name.endswith("memory_copy_trace.csv"):
        return read_rocprof_csv(None, path, offset_ns=offset_ns)
    return read_rocprof_csv(path, None, offset_ns=offset_ns)
