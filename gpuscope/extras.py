"""The optional parts of gpuscope: each comes with an extra of pyproject.toml and is imported only where it is used,
so the base package imports with the base dependencies alone (tests/test_dependencies.py proves it)."""
from __future__ import annotations

import importlib
from types import ModuleType

from gpuscope.errors import MissingExtraError


def optional_import(module: str, *, extra: str, needed_for: str) -> ModuleType:
    """`module`, or a MissingExtraError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise MissingExtraError(f"{needed_for} needs {package}: pip install 'gpuscope[{extra}]'") from None
