"""A file of this repository as it was at another commit, for the side-by-side benchmarks beside this one."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def source_at(commit: str, path: str) -> str:
    """The text of `path` (relative to the repository root) at `commit`; exits with git's message if it has none."""
    shown = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{path}"], capture_output=True, text=True)
    if shown.returncode != 0:
        sys.exit(f"git show {commit}:{path} failed: {shown.stderr.strip()}")
    return shown.stdout
