"""gpuscope: engine events from a patched llama.cpp, read live from a shared-memory ring."""
__version__ = "0.1.0"

from gpuscope.trace.model import Trace, load_trace  # noqa: E402  (the facade users start from)
from gpuscope import live  # noqa: E402  (callable: gpuscope.live(session) or gpuscope.live(ring_path))

__all__ = ["Trace", "live", "load_trace", "__version__"]
