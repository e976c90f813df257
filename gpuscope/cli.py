"""The `gpuscope` command: one CLI, one subcommand per stage.

Each stage module exposes `register(subparsers)` that adds its subcommand(s)
and sets `func` on the parser; this file only wires them together.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

from gpuscope import errors

# Stage modules that contribute subcommands, in the order `--help` lists them.
_COMMAND_MODULES = (
    "gpuscope.trace.record",
    "gpuscope.ring.bench",
    "gpuscope.engine.overhead",
    "gpuscope.models.cli",
    "gpuscope.engine.cli",
    "gpuscope.session.cli",
    "gpuscope.doctor.cli",
    "gpuscope.compare.cli",
    "gpuscope.analysis.bench",
    "gpuscope.collectors.cli",
    "gpuscope.report.cli",
    "gpuscope.live.bench",
    "gpuscope.demo",
)


def command_group(subparsers, name: str, help: str):
    """The nested subparsers of a group such as `bench` that several stage modules add commands to."""
    if name not in subparsers.choices:
        group = subparsers.add_parser(name, help=help)
        group.set_defaults(_group_subparsers=group.add_subparsers(dest=f"{name}_command", metavar="WHAT",
                                                                  required=True))
    return subparsers.choices[name].get_default("_group_subparsers")


def output_path(path: str | os.PathLike, *, folder: bool = False) -> Path:
    """A file (or folder) a command will write, checked before the work that fills it: what stands in its way is
    one clear error instead of a failure after the analysis."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        found, wanted = ("a file", "folder") if folder else ("a folder", "file")
        raise errors.GpuscopeError(f"{path} is {found}: give a {wanted} to write")
    start = path if folder else path.parent
    existing = next(parent for parent in (start, *start.parents) if parent.exists())
    if not existing.is_dir():
        raise errors.GpuscopeError(f"cannot write {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise errors.GpuscopeError(f"cannot write {path}: no permission to write in {existing}")
    return path


@functools.cache  # made once per process: building it costs ~25 ms (argparse's gettext look-ups), parsing is free
def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="gpuscope",
        description="Profile and diagnose llama.cpp/ggml inference from engine hooks.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except errors.GpuscopeError as exc:
        print(f"gpuscope: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # a path given that cannot be written or read (no such folder, a folder where a file goes, a file where
        # a folder goes, no permission, a full disk): the path and the system's reason
        where = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"gpuscope: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpuscope: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
