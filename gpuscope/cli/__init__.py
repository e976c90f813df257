"""The `gpuscope` command: one package, one module per command group.

Each module here exposes `register(subparsers)` that adds its subcommand(s) and sets `func` on the parser; the
library modules they call expose functions only. Options more than one command takes live in `options`."""
from __future__ import annotations

import argparse
import functools
import importlib
import sys

from gpuscope import errors

# Stage modules that contribute subcommands, in the order `--help` lists them.
_COMMAND_MODULES = (
    "gpuscope.cli.record",
    "gpuscope.cli.bench",
    "gpuscope.cli.models",
    "gpuscope.cli.engine",
    "gpuscope.cli.sweep",
    "gpuscope.cli.doctor",
    "gpuscope.cli.compare",
    "gpuscope.cli.query",
    "gpuscope.cli.metrics",
    "gpuscope.cli.collect",
    "gpuscope.cli.report",
    "gpuscope.cli.demo",
)


@functools.cache  # made once per process: building it costs ~25 ms (argparse's gettext look-ups), parsing is free
def build_parser() -> argparse.ArgumentParser:
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

