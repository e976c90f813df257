"""The optional and heavy parts of gpuscope: each optional one comes with an extra of pyproject.toml and is imported
only where it is used, so the base package imports with the base dependencies alone (tests/test_dependencies.py
proves it); a heavy one sits behind a callable package that loads it on the first call."""
from __future__ import annotations

import importlib
import sys
import types

from gpuscope.errors import MissingExtraError


def optional_import(module: str, *, extra: str, needed_for: str) -> types.ModuleType:
    """`module`, or a MissingExtraError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise MissingExtraError(f"{needed_for} needs {package}: pip install 'gpuscope[{extra}]'") from None


def callable_package(name: str, function) -> None:
    """Make the package `name` callable as `function` (`gpuscope.live(...)`, `gpuscope.query(...)`), its modules
    still importable as `name.module`."""
    class _CallablePackage(types.ModuleType):
        def __call__(self, *args, **options):
            return function(*args, **options)

    sys.modules[name].__class__ = _CallablePackage
