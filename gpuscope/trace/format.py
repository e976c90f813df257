"""The trace format's checks (docs/trace-format.md): what `load_trace` verifies before an analysis sees a trace.

A trace comes from disk, so nothing in it is trusted: meta.json must be bounded UTF-8 JSON whose documented keys
have their documented types, and every table must be a readable Parquet file with the columns the format defines
for it, in compatible types. Damage is one TraceError line naming the file and what is wrong. What the format
does not define (a newer writer's meta keys, tables, columns) is kept as it is.
"""
from __future__ import annotations

import json
import math
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gpuscope.errors import TraceError
from gpuscope.ring.schema import load_schema

META_MAX_BYTES = 16 << 20  # real meta.json files are a few KB; a 100-run sweep's stays under 1 MB
META_MAX_DEPTH = 32        # the deepest documented key (runs[].processes.<name>.ring.devices[]) is 6 levels down
COUNT_MAX = 1 << 53        # record counts: 28 years of 10 M events/s, and exact as a JSON number in any reader
INT_RANGE = (-(1 << 63), 1 << 64)  # what a C field or a JSON integer of any writer of the format can hold


# -- meta.json --------------------------------------------------------------------------------------------------

class _Count:
    """A count of records or bytes: an integer from 0 to COUNT_MAX."""


class _Number:
    """An integer or a finite float (never a bool)."""


@dataclass(frozen=True)
class _Object:
    """A JSON object whose listed keys have these shapes when present (null counts as absent: not known);
    keys it does not list pass unchecked. `required` keys must be there."""
    fields: dict = field(default_factory=dict)
    required: tuple = ()


@dataclass(frozen=True)
class _Each:
    """A JSON object of labels (configuration names, device names) whose every value has one shape, and whose
    keys match `keys` (a regular expression) when given."""
    shape: object
    keys: str | None = None


_COUNT, _NUMBER = _Count(), _Number()
_EXIT = _Object({"returncode": int, "signal": int, "how": str})
_RING = _Object({"state": str, "crash_signal": (int, str), "pid": int, "path": str, "opened": bool,
                 "capacity": _COUNT, "written": _COUNT, "read": _COUNT, "lost": _COUNT, "strings_dropped": _COUNT,
                 "writer_dropped": _COUNT, "start_monotonic_ns": int, "start_realtime_ns": int,
                 "devices": ([(str, None)], _Each((str, None))), "unknown_kinds": _Each(_COUNT), "clock": str,
                 "position": _Object({"writers": _Each(_COUNT, keys=r"[0-9]{1,5}"), "unattached": _COUNT})})
_ENGINE = _Object({"name": str, "backend": str, "hooks": bool, "hook_series_sha256": str, "built_at": str,
                   "root": str, "bin_dir": str, "program_dir": str, "options": [str], "targets": [str],
                   "ggml_ops": _Each(str, keys=r"-?[0-9]{1,9}"),
                   "patches": [_Object({"name": str, "sha256": str})],
                   "source": _Object({"id": str, "upstream": str, "path": str})})
_MODEL = _Object({"path": str, "architecture": str, "name": str, "n_layer": int, "n_ctx_train": int,
                  "synthetic": bool})
# gpuscope.trace.model_bytes.ModelBytes.from_meta reads every one of these
_MODEL_BYTES = _Object({"path": str, "architecture": str, "n_layer": _COUNT, "weight_bytes": _COUNT,
                        "weight_bytes_per_step": _COUNT, "layer_bytes": [_COUNT],
                        "kv_elements_per_cell": [[_COUNT]], "swa_layers": [bool], "sliding_window": int},
                       required=("path", "architecture", "n_layer", "weight_bytes", "weight_bytes_per_step",
                                 "layer_bytes", "kv_elements_per_cell", "swa_layers", "sliding_window"))
_CONFIG = _Object({"label": str, "type_k": str, "type_v": str, "tensor_split": [_NUMBER], "devices": [str],
                   "split_mode": str, "flash_attn": str, "n_gpu_layers": int, "main_gpu": int, "n_ctx": int,
                   "n_batch": int, "n_ubatch": int, "n_threads": int, "n_threads_batch": int})
_KERNELS = _Object({"clock": _Object({"offset_ns": _NUMBER, "residual_ns": _NUMBER, "drift_ns": _NUMBER}),
                    "activities": _Each(_COUNT), "cost": dict, "outside_steps": _COUNT, "warning": str,
                    "profiled_from_ns": int, "profiled_to_ns": int})
_STACKS = _Object({"clock": _Object({"origin_ns": _NUMBER, "residual_ns": _NUMBER}), "rate": _NUMBER, "pid": int,
                   "target_exited": bool, "workload_from_ns": int, "workload_to_ns": int, "outside_steps": _COUNT})
META = _Object({
    "format": str, "format_version": int, "gpuscope_version": str, "source": str, "command": [str],
    "program": str, "exit": _EXIT, "ring": _RING, "engine": _ENGINE, "config_label": str, "crashed": bool,
    "started_realtime_s": _NUMBER, "duration_s": _NUMBER, "model": (str, _MODEL), "models": _Each(_MODEL),
    "model_bytes": _MODEL_BYTES, "configs": [_CONFIG],
    "processes": _Each(_Object({"pid": int, "ring": _RING, "exit": _EXIT})), "workload": dict,
    "kernels": _Each(_KERNELS), "stacks": _Each(_STACKS), "bandwidth_gbps": _Each(_NUMBER),
    "machine": _Object({"system": str, "cpu": str, "cpu_cores": int, "memory_bytes": int, "gpu": str}),
    "load": _Object({"window_s": _NUMBER, "cpus": [int], "loadavg": [_NUMBER], "busy_share": _NUMBER,
                     "own_share": _NUMBER, "others_share": _NUMBER,
                     "others": [_Object({"pid": int, "name": str, "cpu_s": _NUMBER})]}),
    "failed": list})
META.fields["runs"] = [META]  # a sweep keeps each configuration's own meta


def parse_meta(data: bytes, where: Path) -> dict:
    """meta.json's bytes as a dict in the documented shape."""
    if len(data) > META_MAX_BYTES:
        raise TraceError(f"{where}: larger than trace metadata can be ({META_MAX_BYTES} bytes)")
    try:
        meta = json.loads(data.decode("utf-8"), parse_int=_integer, parse_float=_float, parse_constant=_constant)
    except UnicodeDecodeError as exc:
        raise TraceError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise TraceError(f"{where}: nested too deeply to be trace metadata") from None
    except ValueError as exc:  # json.JSONDecodeError, and the number hooks' refusals
        raise TraceError(f"{where}: damaged metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise TraceError(f"{where}: holds {_show(meta)}, not a JSON object")
    _check_depth_and_text(meta, where)
    _check(meta, META, "", where)
    return meta


def _integer(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > 20 or not INT_RANGE[0] <= (value := int(text)) < INT_RANGE[1]:
        raise ValueError(f"integer {text[:24]}{'...' if len(text) > 24 else ''} ({digits} digits) is beyond 64 bits")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:24]} is beyond a double's range")
    return value


def _constant(text: str):
    raise ValueError(f"{text} is not a number of the format")


def _check_depth_and_text(meta: dict, where: Path) -> None:
    """Bounded nesting, and text that can be written out again (JSON escapes can spell lone surrogates)."""
    pending = [(meta, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > META_MAX_DEPTH:
            raise TraceError(f"{where}: nested more than {META_MAX_DEPTH} levels deep")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            for text in (key, item):
                if isinstance(text, str) and not text.isascii():
                    try:
                        text.encode("utf-8")
                    except UnicodeEncodeError:
                        raise TraceError(f"{where}: text {text[:40]!r} is not valid Unicode") from None
            if isinstance(item, (dict, list)):
                pending.append((item, depth + 1))


def _check(value, shape, path: str, where: Path) -> None:
    if not _fits(value, shape, path, where):
        raise TraceError(f"{where}: {path or 'the top level'} is {_show(value)}, expected {_describe(shape)}")


def _fits(value, shape, path: str, where: Path) -> bool:
    """Whether `value` has `shape`; a damage inside a container that fits raises, naming the deepest key.
    Alternatives differ in their container type (a list or an object), so at most one looks inside."""
    if isinstance(shape, tuple):
        return any(_fits(value, alternative, path, where) for alternative in shape)
    if shape is None:
        return value is None
    if shape is _COUNT:
        return type(value) is int and 0 <= value <= COUNT_MAX
    if shape is _NUMBER:
        return type(value) in (int, float)
    if shape is int:
        return type(value) is int
    if isinstance(shape, type):
        return isinstance(value, shape)
    if isinstance(shape, list):
        if not isinstance(value, list):
            return False
        for index, item in enumerate(value):
            _check(item, shape[0], f"{path}[{index}]", where)
        return True
    if not isinstance(value, dict):
        return False
    if isinstance(shape, _Each):
        for key, item in value.items():
            if shape.keys and not re.fullmatch(shape.keys, key):
                raise TraceError(f"{where}: {path} has the key {_show(key)}, expected keys of the form {shape.keys}")
            _check(item, shape.shape, _join(path, key), where)
        return True
    for key in shape.required:
        if value.get(key) is None:
            raise TraceError(f"{where}: {path or 'the top level'} has no {key!r}, which its readers need")
    for key, item_shape in shape.fields.items():
        if value.get(key) is not None:
            _check(value[key], item_shape, _join(path, key), where)
    return True


def _join(path: str, key: str) -> str:
    """A key path for a message: keys that are not plain words are quoted and escaped (a key may hold a newline)."""
    key = key if re.fullmatch(r"[\w .:=/+-]{1,60}", key, re.ASCII) else _show(key)
    return f"{path}.{key}" if path else key


def _show(value) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 40 else text[:37] + "..."


_WORDS = {None: "null", str: "a string", int: "an integer", bool: "true or false", dict: "an object", list: "a list",
          _COUNT: f"a count (an integer from 0 to {COUNT_MAX})", _NUMBER: "a number"}


def _describe(shape) -> str:
    if isinstance(shape, tuple):
        return " or ".join(_describe(alternative) for alternative in shape)
    if isinstance(shape, list):
        return f"a list of ({_describe(shape[0])})"
    return "an object" if isinstance(shape, (_Object, _Each)) else _WORDS[shape]


# -- tables -----------------------------------------------------------------------------------------------------

# Column types of the format, as what a reader may rely on: an integer, a number (float or integer, NaN allowed),
# text (strings or categorical strings), and text or null (all-null columns are stored as Parquet's null type).
# Only device names (null: the event has no device) and copy kinds (null: not a copy) may be missing.
INTEGER, NUMBER, TEXT, OPTIONAL_TEXT = "an integer", "a number", "text", "text or null"
_NOT_MISSING = (INTEGER, TEXT)

# Columns the format gives one meaning wherever they appear: every event table's first four, the session's and
# combine's tags, and the collectors' times. `in_step` is null between steps, so it is a number.
COMMON_COLUMNS = {"seq": INTEGER, "ts_ns": INTEGER, "tid": INTEGER, "device": OPTIONAL_TEXT, "duration_ns": INTEGER,
                  "process": TEXT, "pid": INTEGER, "config": TEXT, "in_step": NUMBER, "run": INTEGER}

# Tables beside the event kinds, with the columns their readers take (docs/trace-format.md).
OTHER_TABLES = {
    "steps": {"step": INTEGER, "config": TEXT, "role": TEXT, "phase": TEXT, "pos_before": NUMBER,
              "pos_after": NUMBER, "n_tokens": NUMBER, "n_outputs": NUMBER, "t_begin_ns": INTEGER,
              "t_end_ns": INTEGER, "wall_ns": NUMBER, "status": NUMBER},
    "spec_rounds": {"round": INTEGER, "position": NUMBER, "drafted": NUMBER, "accepted": NUMBER,
                    "verify_tokens": NUMBER},
    "captures": {"step": INTEGER, "name": TEXT, "type": TEXT},
    "kernels": {"ts_ns": INTEGER, "duration_ns": INTEGER, "device": TEXT, "device_index": INTEGER,
                "stream": INTEGER, "category": TEXT, "name": TEXT, "kernel": TEXT, "family": TEXT, "fa_kind": TEXT,
                "grid_x": NUMBER, "grid_y": NUMBER, "grid_z": NUMBER, "block_x": NUMBER, "block_y": NUMBER,
                "block_z": NUMBER, "registers": NUMBER, "shared_memory_bytes": NUMBER, "bytes": NUMBER,
                "copy_kind": OPTIONAL_TEXT, "correlation": NUMBER, "source": TEXT},
    "cpu_stacks": {"ts_ns": INTEGER, "duration_ns": INTEGER, "thread": TEXT, "stack": TEXT, "leaf": TEXT,
                   "samples": INTEGER, "category": TEXT, "function": TEXT},
}

# pyarrow and pandas' reading of the pandas metadata raise any of these on damaged bytes
_READ_ERRORS = (pa.ArrowException, OSError, ValueError, TypeError, KeyError, IndexError, RecursionError)


def required_columns(kind: str) -> dict[str, str] | None:
    """The columns a table of `kind` must have and their types; None for a table the format does not define."""
    if kind in OTHER_TABLES:
        return OTHER_TABLES[kind]
    schema = load_schema()
    if kind not in schema.kinds.values():
        return None
    columns = {name: COMMON_COLUMNS[name] for name in ("seq", "ts_ns", "tid", "device")}
    for payload in schema.payload(kind).fields:
        columns[payload.name] = OPTIONAL_TEXT if payload.decode == "device" else TEXT if payload.decode else \
            NUMBER if payload.ctype in ("float", "double") else INTEGER
    return columns


def check_table(path: Path, kind: str) -> None:
    """A table file's footer against the format: cheap (no data read), so every table is checked before any is
    decoded."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO or a device would block or never end
            raise TraceError(f"{path}: not a regular file")
        schema = pq.read_schema(path)
    except TraceError:
        raise
    except _READ_ERRORS as exc:
        raise TraceError(f"{path}: not a readable Parquet table ({_first_line(exc)})") from None
    names = schema.names
    if len(set(names)) != len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise TraceError(f"{path}: column {repeated[0]!r} appears more than once")
    required = required_columns(kind) or {}
    missing = [name for name in required if name not in names]
    if missing:
        raise TraceError(f"{path}: no column {missing[0]!r} (a {kind} table has {', '.join(required)})")
    for column in schema:
        expected = _expected(column.name, required)
        if expected is not None and not _compatible(column.type, expected):
            raise TraceError(f"{path}: column {column.name!r} is {column.type}, expected {expected}")


def read_table(path: Path, kind: str) -> pd.DataFrame:
    """A table checked with check_table, decoded: damaged data pages and missing integers are TraceErrors too."""
    required = required_columns(kind) or {}
    try:
        table = pq.read_table(path, use_pandas_metadata=True)
        for name in table.column_names:
            if _expected(name, required) in _NOT_MISSING and table.column(name).null_count:
                raise TraceError(f"{path}: column {name!r} has missing values")
        return table.to_pandas()
    except TraceError:
        raise
    except _READ_ERRORS as exc:
        raise TraceError(f"{path}: damaged Parquet data ({_first_line(exc)})") from None


def _expected(column: str, required: dict[str, str]) -> str | None:
    return required.get(column, COMMON_COLUMNS.get(column))


def _compatible(arrow_type: pa.DataType, expected: str) -> bool:
    if expected == INTEGER:
        return pa.types.is_integer(arrow_type)
    if pa.types.is_null(arrow_type):
        return expected in (NUMBER, OPTIONAL_TEXT)
    if expected == NUMBER:
        return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
