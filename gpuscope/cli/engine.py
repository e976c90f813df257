"""`gpuscope engine ...`: build hooked (or unhooked) engines, list them, find their programs, patch a tree."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpuscope.engine import build as builds
from gpuscope.engine import patcher


def register(subparsers: argparse._SubParsersAction) -> None:
    engine = subparsers.add_parser("engine", help="build and find patched llama.cpp engines")
    commands = engine.add_subparsers(dest="engine_command", metavar="WHAT", required=True)

    build = commands.add_parser(
        "build", help="configure and build an engine (reused when nothing changed)",
        description="Build llama.cpp with gpuscope's hooks into the cache. Example: "
                    "gpuscope engine build --name after --patch fix.diff")
    build.add_argument("--backend", choices=builds.BACKENDS, default="cpu")
    build.add_argument("--name", help="build name (default: the backend, '-nohooks' appended without hooks)")
    build.add_argument("--patch", action="append", type=Path, default=[], metavar="FILE",
                       help="unified diff applied with `patch -p1` after the hooks (repeatable)")
    build.add_argument("--src", type=Path, help="a llama.cpp tree to build instead of the pinned one")
    build.add_argument("--no-hooks", action="store_true", help="the unpatched twin, for overhead measurements")
    build.add_argument("--cuda-arch", help="CMAKE_CUDA_ARCHITECTURES (default: the GPUs present)")
    build.add_argument("--hip-arch", help="AMD GPU architecture for --backend hip, e.g. gfx942")
    build.add_argument("--target", action="append", default=[], metavar="T", help="another CMake target to build")
    build.add_argument("--jobs", "-j", type=int, help="parallel compile jobs (default: all cores)")
    build.set_defaults(func=_build)

    listing = commands.add_parser("list", help="show the engine builds in the cache")
    listing.set_defaults(func=_list)

    path = commands.add_parser("path", help="print the folder holding a build's programs and libraries")
    path.add_argument("name", nargs="?", help="build name (default: the most recent hooked CPU build)")
    path.set_defaults(func=_path)

    patch = commands.add_parser(
        "patch", help="apply gpuscope's hook series to a llama.cpp tree in place",
        description="Apply the hook series to your own llama.cpp tree. If any hook site is missing, every such "
                    "site is named and the tree is left untouched.")
    patch.add_argument("src", type=Path, help="root of the llama.cpp tree")
    patch.set_defaults(func=_patch)


def build_spec(args: argparse.Namespace) -> builds.BuildSpec:
    """What `gpuscope engine build ARGS` builds."""
    return builds.BuildSpec(backend=args.backend, name=args.name, patches=args.patch, src=args.src,
                            hooks=not args.no_hooks, cuda_arch=args.cuda_arch, hip_arch=args.hip_arch,
                            targets=args.target, jobs=args.jobs)


def _build(args: argparse.Namespace) -> int:
    build = builds.build_engine(build_spec(args))
    print(build.bin_dir)
    return 0


def _list(args: argparse.Namespace) -> int:
    found = builds.list_builds()
    if not found:
        print("no engine builds yet: run `gpuscope engine build`")
        return 0
    width = max(len(b.name) for b in found)
    print(f"{'name':<{width}} {'backend':<7} {'hooks':<5} {'patches':<24} {'built':<24} path")
    for build in found:
        meta = build.meta
        patches = ",".join(p["name"] for p in meta["patches"]) or "-"
        print(f"{meta['name']:<{width}} {meta['backend']:<7} {'yes' if meta['hooks'] else 'no':<5} {patches:<24} "
              f"{meta['built_at']:<24} {build.bin_dir}")
    return 0


def _path(args: argparse.Namespace) -> int:
    build = builds.find_build(args.name)
    print(f"engine {build.name!r}: backend {build.meta['backend']}, hooks {'on' if build.meta['hooks'] else 'off'}",
          file=sys.stderr)
    print(build.bin_dir)
    return 0


def _patch(args: argparse.Namespace) -> int:
    edits = patcher.load_series()
    if patcher.apply_series(args.src):
        files = sorted({edit.file for edit in edits})
        print(f"gpuscope: applied {len(edits)} hook edits to {len(files)} files in {args.src}; "
              f"hook sources in {args.src / patcher.HOOKS_SUBDIR}")
    else:
        print(f"gpuscope: {args.src} already carries this hook series: nothing to do")
    return 0
