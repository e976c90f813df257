"""The event schema, read from the C headers: the headers are the one definition.

`native_hooks/gpuscope_events.h` defines the event kinds, the enums used in payloads and one payload struct
per kind; `native_hooks/gpuscope_ring.h` defines the ring's file header. This module parses both (they follow
the style rules written at the top of gpuscope_events.h) and lays the structs out with the C ABI's natural
alignment, so the numpy dtypes used to read a ring come from the same text the writer was compiled from.
tests/test_schema_agreement.py compiles the headers and checks every size and offset computed here.
"""
from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpuscope.paths import native_hooks_dir

_C_TYPES: dict[str, str] = {
    "uint8_t": "u1", "int8_t": "i1", "uint16_t": "u2", "int16_t": "i2",
    "uint32_t": "u4", "int32_t": "i4", "uint64_t": "u8", "int64_t": "i8",
    "float": "f4", "double": "f8",
}

_DEFINE = re.compile(r"^#define\s+(GPUSCOPE_\w+)\s+\(?\s*(0x[0-9A-Fa-f]+|\d+)(?:ULL|U|u|ull)?\s*\)?", re.M)
_DEFINE_SHIFT = re.compile(r"^#define\s+(GPUSCOPE_\w+)\s+\((\d+)u?(?:LL|ULL)?\s*<<\s*(\d+)\)", re.M)
_ENUM = re.compile(r"enum\s+gpuscope_(\w+)\s*\{(.*?)\};", re.S)
_ENUM_MEMBER = re.compile(r"^\s*(GPUSCOPE_\w+)\s*=\s*(-?\d+)\s*,?", re.M)
_KIND_LIST = re.compile(r"^#define\s+GPUSCOPE_KINDS\(X\)((?:.*\\\n)*.*)$", re.M)
_KIND_ENTRY = re.compile(r"X\(\s*(\w+)\s*,\s*(\w+)\s*\)")
_STRUCT = re.compile(r"typedef\s+struct\s+(gpuscope_\w+)\s*\{(.*?)\}\s*\1\s*;", re.S)
_FIELD = re.compile(
    r"^\s*(?P<type>\w+)\s+(?P<name>\w+)\s*(?:\[(?P<count>\w+)\])?\s*;"
    r"(?:\s*//\s*(?P<decode>enum:\s*\w+|string|device))?",
    re.M,
)


@dataclass(frozen=True)
class Field:
    name: str
    ctype: str
    count: int          # 1 for scalars, N for `type name[N]`
    offset: int
    decode: str | None  # None, 'string', 'device' or 'enum:<name>'

    @property
    def size(self) -> int:
        return np.dtype(_C_TYPES[self.ctype]).itemsize * self.count

    @property
    def enum(self) -> str | None:
        return self.decode.split(":", 1)[1].strip() if self.decode and self.decode.startswith("enum") else None


@dataclass(frozen=True)
class Struct:
    name: str
    fields: tuple[Field, ...]
    size: int
    align: int

    def dtype(self, itemsize: int | None = None, base_offset: int = 0) -> np.dtype:
        """A numpy dtype with the C layout; `itemsize` pads it (payloads live in a fixed-size slot)."""
        return np.dtype({
            "names": [f.name for f in self.fields],
            "formats": [(_C_TYPES[f.ctype], (f.count,)) if f.count > 1 else _C_TYPES[f.ctype] for f in self.fields],
            "offsets": [base_offset + f.offset for f in self.fields],
            "itemsize": itemsize or self.size,
        })


@dataclass(frozen=True)
class Schema:
    constants: dict[str, int]
    enums: dict[str, dict[int, str]]      # enum name -> value -> label
    structs: dict[str, Struct]            # C struct name -> layout
    kinds: dict[int, str]                 # kind id -> kind name ('fa_plan', ...)
    members: dict[str, int]               # every enum member's C name -> value

    @property
    def record_size(self) -> int:
        return self.constants["GPUSCOPE_RECORD_SIZE"]

    @property
    def payload_size(self) -> int:
        return self.constants["GPUSCOPE_PAYLOAD_SIZE"]

    def payload(self, kind_name: str) -> Struct:
        return self.structs[f"gpuscope_ev_{kind_name}"]

    def kind_id(self, kind_name: str) -> int:
        return {name: kid for kid, name in self.kinds.items()}[kind_name]

    @functools.cached_property
    def record_dtype(self) -> np.dtype:
        """A raw record: header fields plus the payload as opaque bytes."""
        return self.structs["gpuscope_record"].dtype()

    def kind_record_dtype(self, kind_name: str) -> np.dtype:
        """A whole 64-byte record whose payload is laid out as `kind_name`'s struct."""
        record = self.structs["gpuscope_record"]
        payload_offset = next(f.offset for f in record.fields if f.name == "payload")
        head = [f for f in record.fields if f.name != "payload"]
        payload = self.payload(kind_name)
        names = [f.name for f in head] + [f.name for f in payload.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"payload of {kind_name} reuses a record header field name")
        return np.dtype({
            "names": names,
            "formats": [record.dtype()[f.name] for f in head] + [payload.dtype()[f.name] for f in payload.fields],
            "offsets": [f.offset for f in head] + [payload_offset + f.offset for f in payload.fields],
            "itemsize": record.size,
        })


def _enum_labels(members: list[tuple[str, int]]) -> dict[int, str]:
    """GPUSCOPE_FA_REASON_HEAD_SIZE -> 'head_size': strip the members' common prefix at an underscore."""
    names = [name for name, _ in members]
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    prefix = prefix[: prefix.rfind("_") + 1] if len(names) > 1 else names[0][: names[0].rfind("_") + 1]
    return {value: name[len(prefix):].lower() for name, value in members}


def _layout(name: str, body: str, constants: dict[str, int]) -> Struct:
    fields: list[Field] = []
    offset = 0
    align = 1
    for match in _FIELD.finditer(body):
        ctype = match["type"]
        if ctype not in _C_TYPES:
            raise ValueError(f"{name}.{match['name']}: type {ctype} is not one the schema allows")
        count_text = match["count"]
        count = 1 if count_text is None else int(constants.get(count_text, count_text))
        field_align = np.dtype(_C_TYPES[ctype]).itemsize
        offset = -(-offset // field_align) * field_align
        decode = re.sub(r"\s+", "", match["decode"]) if match["decode"] else None
        fields.append(Field(match["name"], ctype, count, offset, decode))
        offset += field_align * count
        align = max(align, field_align)
    size = -(-offset // align) * align
    return Struct(name, tuple(fields), size, align)


def parse_headers(*texts: str) -> Schema:
    text = "\n".join(texts)
    constants = {name: int(value, 0) for name, value in _DEFINE.findall(text)}
    constants.update({name: int(base) << int(shift) for name, base, shift in _DEFINE_SHIFT.findall(text)})
    members_by_enum = {name: [(m, int(v)) for m, v in _ENUM_MEMBER.findall(body)] for name, body in _ENUM.findall(text)}
    enums = {name: _enum_labels(members) for name, members in members_by_enum.items()}
    structs = {name: _layout(name, body, constants) for name, body in _STRUCT.findall(text)}
    kinds = enums.pop("kind")
    members = {m: v for enum_members in members_by_enum.values() for m, v in enum_members}
    schema = Schema(constants, enums, structs, kinds, members)
    kind_list = _KIND_LIST.search(text)
    if kind_list is None:
        raise ValueError("no GPUSCOPE_KINDS(X) list")
    _check(schema, _KIND_ENTRY.findall(kind_list[1]))
    return schema


def _check(schema: Schema, kind_list: list[tuple[str, str]]) -> None:
    """Refuse a header that breaks the rules the reader relies on."""
    if schema.structs["gpuscope_record"].size != schema.record_size:
        raise ValueError("gpuscope_record is not GPUSCOPE_RECORD_SIZE bytes")
    # The list is what ties a kind id to its payload type in C: a wrong pair lets one kind's payload be written
    # under another kind's id.
    listed = [f"X({upper}, {lower})" for upper, lower in kind_list]
    expected = [f"X({name.upper()}, {name})" for name in schema.kinds.values()]
    for found, wanted in itertools.zip_longest(listed, expected, fillvalue="nothing"):
        if found != wanted:
            raise ValueError(f"GPUSCOPE_KINDS(X) must list every kind of enum gpuscope_kind, in order, with its "
                             f"payload: {wanted} expected where it has {found}")
    for kind_name in schema.kinds.values():
        payload = schema.structs.get(f"gpuscope_ev_{kind_name}")
        if payload is None:
            raise ValueError(f"kind {kind_name} has no struct gpuscope_ev_{kind_name}")
        if payload.size > schema.payload_size:
            raise ValueError(f"gpuscope_ev_{kind_name} is {payload.size} bytes, over {schema.payload_size}")
        for field in payload.fields:
            if field.enum and field.enum not in schema.enums:
                raise ValueError(f"gpuscope_ev_{kind_name}.{field.name} names unknown enum {field.enum}")


@functools.cache
def load_schema(hooks_dir: Path | None = None) -> Schema:
    """The schema of the native hooks this package ships (or of another checkout's `hooks_dir`)."""
    hooks_dir = hooks_dir or native_hooks_dir()
    return parse_headers(*(Path(hooks_dir, name).read_text() for name in ("gpuscope_events.h", "gpuscope_ring.h")))
