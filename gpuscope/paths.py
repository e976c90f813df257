"""Where gpuscope keeps things: the cache root and the native hook sources."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Cache for engine sources, builds, models and native tools: $GPUSCOPE_CACHE or ~/.cache/gpuscope."""
    root = Path(os.environ.get("GPUSCOPE_CACHE") or Path.home() / ".cache" / "gpuscope")
    root.mkdir(parents=True, exist_ok=True)
    return root


def native_hooks_dir() -> Path:
    """The C sources: the repo's native_hooks/ in an editable install, else the copy shipped in the wheel."""
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir.parent / "native_hooks", package_dir / "_native_hooks"):
        if (candidate / "gpuscope_events.h").is_file():
            return candidate
    raise FileNotFoundError(f"gpuscope's native_hooks/ not found next to {package_dir}")
