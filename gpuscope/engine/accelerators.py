"""Which engine backend this machine can build and run: an NVIDIA GPU with the CUDA compiler, an AMD GPU with HIP's,
or the CPU. `gpuscope demo` profiles what it finds, so a user with a GPU sees their GPU, and says why it chose it.

The facts come from the vendors' own tools (nvidia-smi, rocminfo) and the compilers on PATH or in their usual
folders; `choose_backend` turns them into a choice with its reason and holds no I/O, so every case is testable.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gpuscope.errors import EngineBuildError

_TOOL_SECONDS = 30


@dataclass(frozen=True)
class Accelerators:
    """What was found: per GPU its name and architecture ('90' for sm_90, 'gfx942'), and the compilers' paths."""
    nvidia: tuple[tuple[str, str], ...]
    nvcc: str | None
    amd: tuple[tuple[str, str], ...]
    hipcc: str | None


@dataclass(frozen=True)
class BackendChoice:
    backend: str             # 'cuda', 'hip' or 'cpu'
    arch: str | None         # CMAKE_CUDA_ARCHITECTURES or GPU_TARGETS; None for the CPU
    gpus: tuple[str, ...]    # the GPUs the build will run on
    reason: str              # one sentence for the user


def choose_backend(found: Accelerators) -> BackendChoice:
    """The GPU backend whose GPU and compiler are both here (NVIDIA before AMD), else the CPU, with why."""
    if found.nvidia and found.nvcc:
        return BackendChoice("cuda", _archs(found.nvidia),
                             tuple(name for name, _ in found.nvidia),
                             f"{_gpu_list(found.nvidia)} and nvcc ({found.nvcc}): the CUDA engine")
    if found.amd and found.hipcc:
        return BackendChoice("hip", _archs(found.amd),
                             tuple(name for name, _ in found.amd),
                             f"{_gpu_list(found.amd)} and hipcc ({found.hipcc}): the HIP engine")
    if found.nvidia:
        why = f"{_gpu_list(found.nvidia)} but no nvcc (install the CUDA toolkit or put its bin/ on PATH)"
    elif found.amd:
        why = f"{_gpu_list(found.amd)} but no hipcc (install ROCm's HIP SDK or put /opt/rocm/bin on PATH)"
    else:
        compilers = [name for name, path in (("nvcc", found.nvcc), ("hipcc", found.hipcc)) if path]
        why = "no NVIDIA or AMD GPU found (nvidia-smi and rocminfo list none)" + (
            f", though {' and '.join(compilers)} {'is' if len(compilers) == 1 else 'are'} installed"
            if compilers else "")
    return BackendChoice("cpu", None, (), f"{why}: the CPU engine")


def detect() -> Accelerators:
    """This machine's GPUs and GPU compilers."""
    return Accelerators(nvidia=tuple(nvidia_gpus()),
                        nvcc=_compiler("nvcc", os.environ.get("CUDA_HOME"), "/usr/local/cuda"),
                        amd=tuple(amd_gpus()), hipcc=_compiler("hipcc", os.environ.get("ROCM_PATH"), "/opt/rocm"))


NVIDIA_QUERY = ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"]


def nvidia_gpus() -> list[tuple[str, str]]:
    """(name, compute capability without the dot) per NVIDIA GPU; none without nvidia-smi or a driver."""
    return parse_nvidia_smi(_tool_output(NVIDIA_QUERY))


def parse_nvidia_smi(out: str) -> list[tuple[str, str]]:
    """NVIDIA_QUERY's output as (name, '90') pairs."""
    gpus = []
    for line in out.splitlines():
        name, _, capability = line.rpartition(",")
        if name.strip() and re.fullmatch(r"\d+\.\d+", capability.strip()):
            gpus.append((name.strip(), capability.strip().replace(".", "")))
    return gpus


def nvidia_gpu_facts() -> list[str]:
    """'name, driver, memory' per NVIDIA GPU as nvidia-smi reports them, for a trace's meta; none without it."""
    out = _tool_output(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    return [line.strip() for line in out.splitlines() if line.strip()]


def amd_gpus() -> list[tuple[str, str]]:
    """(marketing name, gfx architecture) per AMD GPU agent rocminfo lists; none without ROCm."""
    return parse_rocminfo(_tool_output(["rocminfo"]))


def parse_rocminfo(out: str) -> list[tuple[str, str]]:
    """rocminfo's agents that are GPUs, as (marketing name, 'gfx942') pairs."""
    gpus = []
    for agent in re.split(r"\n\*+\s*\nAgent \d+", out)[1:]:
        arch = re.search(r"^\s*Name:\s*(gfx[0-9a-f]+)\s*$", agent, re.M)
        if arch and re.search(r"^\s*Device Type:\s*GPU\s*$", agent, re.M):
            marketing = re.search(r"^\s*Marketing Name:\s*(.+?)\s*$", agent, re.M)
            gpus.append((marketing.group(1) if marketing else arch.group(1), arch.group(1)))
    return gpus


def cuda_arch() -> str:
    """The compute capabilities of the NVIDIA GPUs present, as CMAKE_CUDA_ARCHITECTURES wants them (e.g. '90')."""
    gpus = nvidia_gpus()
    if not gpus:
        raise EngineBuildError("no NVIDIA GPU found to take the CUDA architecture from: pass --cuda-arch (e.g. 90)")
    return _archs(gpus)


def _archs(gpus) -> str:
    """The GPUs' distinct architectures, ';'-separated as CMake's architecture lists take them."""
    return ";".join(sorted({arch for _, arch in gpus}))


def _gpu_list(gpus: tuple[tuple[str, str], ...]) -> str:
    names = sorted({name for name, _ in gpus})
    count = f"{len(gpus)} GPUs" if len(gpus) > 1 else "GPU"
    return f"{count} {', '.join(names)} ({_archs(gpus).replace(';', ', ')})"


def _compiler(name: str, home: str | None, default_home: str) -> str | None:
    on_path = shutil.which(name)
    if on_path:
        return on_path
    for folder in filter(None, (home, default_home)):
        candidate = Path(folder) / "bin" / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _tool_output(command: list[str]) -> str:
    """A vendor tool's output; empty where it is missing, fails (no driver) or hangs."""
    if shutil.which(command[0]) is None:
        return ""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=_TOOL_SECONDS)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""
