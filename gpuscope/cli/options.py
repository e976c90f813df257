"""Options and checks that several commands share: context depths, the analysis options (bandwidth, model),
command groups (`bench`, `collect`) and output paths checked before the work."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from gpuscope.analysis.bandwidth import measure_copy_bandwidth
from gpuscope.analysis.facade import Analysis
from gpuscope.doctor.rules import diagnose
from gpuscope.errors import GpuscopeError
from gpuscope.runs.verify import DEFAULT_ROUNDS, verify


def parse_bandwidth(items: list[str] | None) -> dict[str, float]:
    """DEVICE=GBPS pairs (`CPU=12.5`, `CUDA0=3050`)."""
    given = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            given[name] = float(value)
        except ValueError:
            raise GpuscopeError(f"--bandwidth {item!r}: expected DEVICE=GBPS, for example CUDA0=3050") from None
        if not sep or not name or given[name] <= 0:
            raise GpuscopeError(f"--bandwidth {item!r}: expected DEVICE=GBPS with a positive number")
    return given


def analysis_options(args) -> dict:
    """Analysis(...) keyword arguments from the options add_analysis_options adds."""
    bandwidth = parse_bandwidth(args.bandwidth)
    if args.measure_bandwidth:
        bandwidth.setdefault("CPU", measure_copy_bandwidth())
    return {"model": args.model, "bandwidth": bandwidth}


def analysis_from_args(path, args) -> Analysis:
    return Analysis(path, **analysis_options(args))


def add_analysis_options(parser) -> None:
    parser.add_argument("--model", help="the GGUF file the run used, when the trace does not name it")
    parser.add_argument("--bandwidth", action="append", metavar="DEVICE=GBPS",
                        help="memory bandwidth of a device in GB/s (repeatable), for the bandwidth floor")
    parser.add_argument("--measure-bandwidth", action="store_true",
                        help="measure this machine's host copy bandwidth for the CPU device (only meaningful "
                             "for traces recorded on this machine)")


def add_verify_options(parser) -> None:
    parser.add_argument("--verify", action="store_true",
                        help="re-run the trace's workload with each finding's first remedy, interleaved with the "
                             "recorded configuration, and report the measured saving with its 95%% interval")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help=f"interleaved rounds per remedy with --verify (default {DEFAULT_ROUNDS})")


def add_text_options(parser) -> None:
    parser.add_argument("--width", type=positive, help="wrap the text to this many columns (default: the terminal's "
                                                       "width, or 100 when the output is not a terminal)")
    parser.add_argument("--rows", type=positive, help="show at most this many rows of each table")


def positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return number


def verified_findings(analysis: Analysis, args) -> list:
    """The doctor's findings, verified by running their remedies when --verify was given."""
    findings = diagnose(analysis)
    if args.verify:
        verify(analysis, findings, rounds=args.rounds, model=args.model)
    return findings


def depths(text: str) -> list[int]:
    """`--depths 0,512,1024`: context depths as token counts."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of token counts") from None


def counts(text: str) -> list[int]:
    """`--events 1e6,1e7`, `--traces 1,10,100`: whole counts, written plainly or as 1e6."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or not all(value.is_integer() and value >= 1 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole counts (1,10,100 or 1e6)")
    return [int(value) for value in values]


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
        raise GpuscopeError(f"{path} is {found}: give a {wanted} to write")
    start = path if folder else path.parent
    existing = next(parent for parent in (start, *start.parents) if parent.exists())
    if not existing.is_dir():
        raise GpuscopeError(f"cannot write {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise GpuscopeError(f"cannot write {path}: no permission to write in {existing}")
    return path
