"""Where models are cached, and how files get there: whole or not at all."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from gpuscope.log import say
from gpuscope.paths import cache_root


def models_dir() -> Path:
    """`<cache root>/models`, created on first use."""
    path = cache_root() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def progress(message: str) -> None:
    """Progress, through gpuscope.log (stderr in a terminal, so stdout carries only results)."""
    say(f"gpuscope: {message}")


@contextmanager
def atomic_output(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` on success, delete it on any failure.

    Readers therefore see either no file or a complete one, even if the writer is killed.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o644)  # mkstemp makes 0600; cached models are meant to be shared
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
