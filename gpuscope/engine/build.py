"""Engine builds: the pinned (or a user's) llama.cpp, hooked or not, with extra patches, built with CMake.

Each build lives in `<cache>/engine/<name>-<key>/`: `src/` (the patched copy of the tree) and `build/` (the CMake
build folder). The key hashes the source, the hook series, the user patches and the CMake options, so a changed
input makes a new build and an unchanged one is reused. `build/bin/` holds every program and shared library
(llama-cpp-python's LLAMA_CPP_LIB_PATH can point there) and `build/gpuscope-build.json` describes the build.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from gpuscope.engine import accelerators, patcher, source
from gpuscope.errors import EngineBuildError, EngineNotFoundError, PatchError
from gpuscope.log import say
from gpuscope.paths import cache_root
from gpuscope.version import __version__

BACKENDS = ("cpu", "cuda", "hip")
META_NAME = "gpuscope-build.json"

# Built in every engine: the libraries (ggml with the RPC backend) and the programs our users run.
DEFAULT_TARGETS = (
    "llama", "ggml", "ggml-rpc",
    "llama-bench", "llama-cli", "llama-server", "llama-quantize", "ggml-rpc-server",
    "llama-speculative", "llama-speculative-simple", "llama-eval-callback", "llama-batched-bench", "llama-parallel",
)

# Top-level folders of a user's tree that are build outputs or VCS data, not source.
_NOT_SOURCE = re.compile(r"^(\.git|build.*|cmake-build.*|\.cache)$")
# The parts of a llama.cpp tree a build compiles: what a user tree's digest covers.
_SOURCE_PARTS = ("CMakeLists.txt", "cmake", "common", "ggml", "include", "src", "tools", "examples", "vendor")


def engine_root() -> Path:
    return cache_root() / "engine"


@dataclass
class BuildSpec:
    backend: str = "cpu"
    name: str | None = None
    patches: list[Path] = field(default_factory=list)
    src: Path | None = None
    hooks: bool = True
    cuda_arch: str | None = None
    hip_arch: str | None = None
    targets: list[str] = field(default_factory=list)
    jobs: int | None = None

    def resolved_name(self) -> str:
        if self.name:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
                raise EngineBuildError(f"build name {self.name!r}: use letters, digits, '.', '_' and '-'")
            return self.name
        return self.backend if self.hooks else f"{self.backend}-nohooks"


@dataclass(frozen=True)
class Build:
    """A finished engine build, as its metadata file describes it."""
    root: Path
    meta: dict

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def build_dir(self) -> Path:
        return self.root / "build"

    @property
    def bin_dir(self) -> Path:
        return self.build_dir / "bin"

    def program(self, program: str) -> Path:
        path = self.bin_dir / program
        if not path.is_file():
            have = sorted(p.name for p in self.bin_dir.iterdir() if p.is_file() and os.access(p, os.X_OK)
                          and ".so" not in p.name)
            raise EngineNotFoundError(f"build {self.name!r} has no program {program!r} (it has: {', '.join(have)}); "
                                      f"rebuild it with `--target {program}`")
        return path


# ---- options and keys -------------------------------------------------------------------------------------------

def cmake_options(spec: BuildSpec, build_dir: Path) -> list[str]:
    bin_dir = build_dir / "bin"
    options = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=ON",
        # every library and program in one folder: LLAMA_CPP_LIB_PATH needs libllama and its ggml libraries together
        f"-DCMAKE_RUNTIME_OUTPUT_DIRECTORY={bin_dir}",
        f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={bin_dir}",
        # portable CPU code: a native build uses AMX where the CPU advertises it, and dies with SIGILL where the
        # sandbox forbids it
        "-DGGML_NATIVE=OFF",
        "-DGGML_RPC=ON",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_TOOLS=ON",
        "-DLLAMA_BUILD_EXAMPLES=ON",
        "-DLLAMA_BUILD_SERVER=ON",
        # no network at build time: no web UI download, no TLS for model downloads
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DLLAMA_OPENSSL=OFF",
    ]
    if spec.backend == "cuda":
        options += ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={spec.cuda_arch or accelerators.cuda_arch()}"]
    elif spec.backend == "hip":
        if not spec.hip_arch:
            raise EngineBuildError("a HIP build needs the GPU architecture: pass --hip-arch (for example gfx942)")
        options += ["-DGGML_HIP=ON", f"-DGPU_TARGETS={spec.hip_arch}", f"-DAMDGPU_TARGETS={spec.hip_arch}"]
    return options


def tree_digest(root: Path) -> str:
    """Content hash of the source parts of a user's llama.cpp tree."""
    digest = hashlib.sha256()
    for part in _SOURCE_PARTS:
        base = root / part
        paths = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for path in paths:
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def build_key(source_id: str, spec: BuildSpec, options: list[str], patches: list[dict]) -> str:
    identity = {
        "source": source_id,
        "hooks": patcher.series_digest() if spec.hooks else None,
        "patches": [p["sha256"] for p in patches],
        # the folder-dependent output options are the same for every build: keep them out of the key
        "options": [o for o in options if "OUTPUT_DIRECTORY" not in o],
        "targets": sorted(set(DEFAULT_TARGETS) | set(spec.targets)),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


# ---- building ----------------------------------------------------------------------------------------------------

def build_engine(spec: BuildSpec) -> Build:
    """Configure and build (or reuse) the engine `spec` describes."""
    if spec.backend not in BACKENDS:
        raise EngineBuildError(f"unknown backend {spec.backend!r}: use one of {', '.join(BACKENDS)}")
    name = spec.resolved_name()
    if spec.src is not None:
        src = Path(spec.src).resolve()
        if not (src / "ggml").is_dir():
            raise EngineBuildError(f"{src} is not a llama.cpp tree (no ggml/ folder)")
        if not spec.hooks and patcher.applied_digest(src) is not None:
            raise EngineBuildError(f"{src} already carries gpuscope hooks: a --no-hooks build needs a clean tree")
        source_id = f"tree:{tree_digest(src)}"
    else:
        src = source.pinned_source()
        source_id = f"pinned:{source.SDIST_SHA256}"
    patches = [{"path": str(Path(p).resolve()), "name": Path(p).name, "sha256": _patch_sha(Path(p))}
               for p in spec.patches]
    placeholder = cmake_options(spec, Path("/build"))
    key = build_key(source_id, spec, placeholder, patches)
    root = engine_root() / f"{name}-{key}"
    root.parent.mkdir(parents=True, exist_ok=True)
    # one builder per build folder: another process (a test session, a notebook) waits and then reuses it
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"gpuscope: waiting for another process building engine {name!r}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        existing = _read_build(root)
        if existing is not None:
            say(f"gpuscope: engine {name!r} is up to date ({root})")
            return existing
        return _build_locked(spec, name, key, root, src, source_id, patches)


def _build_locked(spec: BuildSpec, name: str, key: str, root: Path, src: Path, source_id: str,
                  patches: list[dict]) -> Build:
    started = time.time()
    tree = _prepare_tree(src, root, spec, patches)
    build_dir = root / "build"
    options = cmake_options(spec, build_dir)
    targets = list(dict.fromkeys([*DEFAULT_TARGETS, *spec.targets]))
    _configure(tree, build_dir, options)
    _compile(build_dir, targets, spec.jobs)
    meta = {
        "name": name,
        "key": key,
        "backend": spec.backend,
        "hooks": spec.hooks,
        "hook_series_sha256": patcher.series_digest() if spec.hooks else None,
        "patches": patches,
        "source": {"id": source_id, "path": str(src),
                   "upstream": source.UPSTREAM_COMMIT if spec.src is None else None},
        "options": options,
        "targets": targets,
        "build_seconds": round(time.time() - started, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "gpuscope_version": __version__,
        "root": str(root),
        "bin_dir": str(build_dir / "bin"),
    }
    (build_dir / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    _drop_older_builds(name, keep=root)
    say(f"gpuscope: built engine {name!r} in {meta['build_seconds']:.0f} s: {build_dir / 'bin'}")
    return Build(root=root, meta=meta)


def _patch_sha(path: Path) -> str:
    if not path.is_file():
        raise PatchError(f"patch file not found: {path}")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _prepare_tree(src: Path, root: Path, spec: BuildSpec, patches: list[dict]) -> Path:
    """The patched copy of the source under root/src (reused when an interrupted build left it complete)."""
    tree = root / "src"
    if tree.is_dir():
        return tree
    root.mkdir(parents=True, exist_ok=True)
    staging = root / "src.partial"
    shutil.rmtree(staging, ignore_errors=True)
    say(f"gpuscope: copying {src} to {tree}")
    shutil.copytree(src, staging, symlinks=True,
                    ignore=lambda folder, names: [n for n in names if Path(folder) == src and _NOT_SOURCE.match(n)])
    try:
        if spec.hooks:
            patcher.apply_series(staging)
        for patch in patches:
            say(f"gpuscope: applying {patch['name']}")
            patcher.apply_user_patch(staging, Path(patch["path"]))
    except PatchError:
        shutil.rmtree(root, ignore_errors=True)
        raise
    staging.rename(tree)
    return tree


def _configure(tree: Path, build_dir: Path, options: list[str]) -> None:
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    if (build_dir / "CMakeCache.txt").is_file():
        generator = []  # an interrupted build keeps its generator
    command = ["cmake", "-S", str(tree), "-B", str(build_dir), *generator, *options]
    say("gpuscope: configuring: " + " ".join(command))
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise EngineBuildError("CMake configuration failed:\n" + _tail(done.stdout + done.stderr))


_NINJA_PROGRESS = re.compile(r"^\[(\d+)/(\d+)\]")
_MAKE_PROGRESS = re.compile(r"^\[\s*(\d+)%\]")


def _compile(build_dir: Path, targets: list[str], jobs: int | None) -> None:
    jobs = jobs or os.cpu_count() or 2
    command = ["cmake", "--build", str(build_dir), "--parallel", str(jobs), "--target", *targets]
    say(f"gpuscope: building {len(targets)} targets with {jobs} jobs")
    progress = _Progress()
    recent: deque[str] = deque(maxlen=400)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    for line in process.stdout:
        line = line.rstrip("\n")
        recent.append(line)
        ninja = _NINJA_PROGRESS.match(line)
        make = _MAKE_PROGRESS.match(line)
        if ninja:
            progress.show(100.0 * int(ninja.group(1)) / max(1, int(ninja.group(2))), line)
        elif make:
            progress.show(float(make.group(1)), line)
    process.wait()
    progress.done()
    if process.returncode != 0:
        raise EngineBuildError(f"the engine build failed (exit {process.returncode}):\n" + _tail("\n".join(recent)))


class _Progress:
    """One updating line on a terminal; a line per 10% otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last_decile = -1

    def show(self, percent: float, line: str) -> None:
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns
            text = f"gpuscope: build {percent:5.1f}% {line}"
            sys.stderr.write("\r" + text[: width - 1].ljust(width - 1))
            sys.stderr.flush()
        elif int(percent // 10) > self.last_decile:
            self.last_decile = int(percent // 10)
            say(f"gpuscope: build {percent:5.1f}%")

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def _tail(output: str, lines: int = 40) -> str:
    """The end of a tool's output, led by its first error lines (what a person reads first)."""
    all_lines = output.rstrip().splitlines()
    errors = [line for line in all_lines if re.search(r"\berror\b|Error|FAILED", line)][:10]
    tail = all_lines[-lines:]
    head = [line for line in errors if line not in tail]
    return "\n".join([*head, *(["..."] if head else []), *tail])


def _drop_older_builds(name: str, keep: Path) -> None:
    """A name means one build: older keys of the same name go once the new one is complete."""
    for build in list_builds():
        if build.name == name and build.root != keep:
            shutil.rmtree(build.root, ignore_errors=True)


# ---- finding builds ------------------------------------------------------------------------------------------------

def _read_build(root: Path) -> Build | None:
    meta_file = root / "build" / META_NAME
    if not meta_file.is_file():
        return None
    return Build(root=root, meta=json.loads(meta_file.read_text()))


def list_builds() -> list[Build]:
    """Finished builds, newest first."""
    root = engine_root()
    builds = [b for b in (_read_build(d) for d in root.iterdir() if d.is_dir()) if b is not None] if root.is_dir() else []
    return sorted(builds, key=lambda b: (b.build_dir / META_NAME).stat().st_mtime, reverse=True)


def find_build(name: str | None = None) -> Build:
    """The build called `name`; None: the most recent hooked CPU build of the engine as it is (no extra patches)."""
    builds = list_builds()
    if name is None:
        for build in builds:
            if build.meta["backend"] == "cpu" and build.meta["hooks"] and not build.meta["patches"]:
                return build
        raise EngineNotFoundError("no hooked CPU engine build yet: run `gpuscope engine build` first")
    for build in builds:
        if build.name == name:
            return build
    known = ", ".join(sorted({b.name for b in builds})) or "none"
    raise EngineNotFoundError(f"no engine build named {name!r} (builds: {known}); "
                              f"make it with `gpuscope engine build --name {name}`")


def find_program(program: str, build: str | None = None) -> Path:
    """Path of `program` (e.g. 'llama-bench') in the named build, or in the default one (see find_build)."""
    return find_build(build).program(program)


def twin_command(hooked: Build, name: str) -> str:
    """The `gpuscope engine build` command that makes `hooked`'s unhooked twin, called `name`: the same backend,
    source, patches and GPU architecture, without the hooks."""
    meta = hooked.meta
    words = ["gpuscope", "engine", "build", "--no-hooks", "--name", name, "--backend", meta["backend"]]
    if meta["source"]["upstream"] is None:  # built from a tree of the user's
        words += ["--src", meta["source"]["path"]]
    for patch in meta["patches"]:
        words += ["--patch", patch["path"]]
    architecture_flags = {"-DCMAKE_CUDA_ARCHITECTURES": "--cuda-arch", "-DGPU_TARGETS": "--hip-arch"}
    for option in meta["options"]:
        key, _, value = option.partition("=")
        if key in architecture_flags:
            words += [architecture_flags[key], value]
    return shlex.join(words)
