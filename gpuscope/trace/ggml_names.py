"""Names for the raw ggml enums some payloads carry (ggml_type, ggml_op): their numbering belongs to the engine
version, so op names are read from the engine's own ggml.h when a trace is made and kept in its meta
(`engine.ggml_ops`, gpuscope.trace.standalone); type names come from the `gguf` package (the GGUF file format
fixes type numbers)."""
from __future__ import annotations

from gguf.constants import GGMLQuantizationType


def type_name(value: int) -> str:
    """'f16', 'q8_0', ... for a ggml_type number; 255 is gpuscope's 'no tensor'."""
    if value == 255:
        return "none"
    try:
        return GGMLQuantizationType(int(value)).name.lower()
    except ValueError:
        return f"type{int(value)}"


def op_names(engine_meta: dict | None) -> dict[int, str]:
    """ggml_op names as the trace recorded them (`engine.ggml_ops`); empty for a trace made without them."""
    recorded = (engine_meta or {}).get("ggml_ops")
    if not isinstance(recorded, dict):
        return {}
    return {int(value): str(name) for value, name in recorded.items() if str(value).lstrip("-").isdigit()}
