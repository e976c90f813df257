"""gpuscope: engine events from a patched llama.cpp, read live from a shared-memory ring."""
from gpuscope import live  # callable: gpuscope.live(session) or gpuscope.live(ring_path)
from gpuscope import query  # callable: gpuscope.query(sql, traces); DuckDB loads on the first query
from gpuscope.trace.model import Trace, load_trace  # the facade users start from
from gpuscope.version import __version__

__all__ = ["Trace", "live", "load_trace", "query", "__version__"]
