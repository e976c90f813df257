"""Where gpuscope keeps things: the cache root, the native hook sources and the recorded datasets."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Cache for engine sources, builds, models and native tools: $GPUSCOPE_CACHE or ~/.cache/gpuscope."""
    root = Path(os.environ.get("GPUSCOPE_CACHE") or Path.home() / ".cache" / "gpuscope")
    root.mkdir(parents=True, exist_ok=True)
    return root


def shipped_dir(name: str, marker: str) -> Path:
    """A folder of the repository shipped with the package: `<repo>/<name>` in an editable install, else the copy
    the wheel carries as `gpuscope/_<name>`; `marker` is a file that must be in it."""
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir.parent / name, package_dir / f"_{name}"):
        if (candidate / marker).is_file():
            return candidate
    raise FileNotFoundError(f"gpuscope's {name}/ not found next to {package_dir} (a broken installation)")


def native_hooks_dir() -> Path:
    """The C sources of the ring and the hooks."""
    return shipped_dir("native_hooks", "gpuscope_events.h")


def datasets_dir() -> Path:
    """The recorded traces."""
    return shipped_dir("datasets", "README.md")
