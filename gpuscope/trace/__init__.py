"""Traces: engine events as one DataFrame per kind, plus metadata, stored as Parquet."""
from gpuscope.trace.model import Trace, load_trace, save_trace

__all__ = ["Trace", "load_trace", "save_trace"]
