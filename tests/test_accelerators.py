"""Which backend `gpuscope demo` builds: the GPU whose compiler is here, else the CPU, with the reason it says.
The parsers read vendor tools' recorded output (tests/data/tools/README.md); the choice is checked for each case
and on this machine's own tools, and a GPU backend this machine cannot build is refused in one line, at once."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from gpuscope.engine.accelerators import Accelerators, choose_backend, detect, parse_nvidia_smi, parse_rocminfo

TOOLS = Path(__file__).parent / "data" / "tools"
MI = parse_rocminfo((TOOLS / "rocminfo-mi210-mi50-mi100.txt").read_text())
H200 = parse_nvidia_smi((TOOLS / "nvidia-smi-h200.txt").read_text())


def test_rocminfo_lists_the_gpu_agents_and_not_the_cpus() -> None:
    assert MI == [("AMD Instinct MI210", "gfx90a"), ("AMD Instinct MI50/MI60", "gfx906"),
                  ("AMD Instinct MI100", "gfx908")]


def test_nvidia_smi_gives_the_compute_capability_without_its_dot() -> None:
    assert H200 == [("NVIDIA H200", "90")]
    assert parse_nvidia_smi("No devices were found\n") == []


def test_a_gpu_and_its_compiler_choose_the_gpu_backend_nvidia_first() -> None:
    cuda = choose_backend(Accelerators(nvidia=tuple(H200), nvcc="/usr/local/cuda/bin/nvcc", amd=(), hipcc=None))
    assert (cuda.backend, cuda.arch, cuda.gpus) == ("cuda", "90", ("NVIDIA H200",))
    assert "NVIDIA H200 (90) and nvcc (/usr/local/cuda/bin/nvcc)" in cuda.reason
    hip = choose_backend(Accelerators(nvidia=(), nvcc=None, amd=tuple(MI), hipcc="/opt/rocm/bin/hipcc"))
    assert (hip.backend, hip.arch) == ("hip", "gfx906;gfx908;gfx90a")
    assert hip.reason.startswith("3 GPUs AMD Instinct MI100, AMD Instinct MI210, AMD Instinct MI50/MI60")
    both = choose_backend(Accelerators(nvidia=tuple(H200), nvcc="nvcc", amd=tuple(MI), hipcc="hipcc"))
    assert both.backend == "cuda"


def test_a_gpu_without_its_compiler_falls_back_to_the_cpu_and_says_what_to_install() -> None:
    no_nvcc = choose_backend(Accelerators(nvidia=tuple(H200), nvcc=None, amd=(), hipcc=None))
    assert no_nvcc.backend == "cpu" and "but no nvcc (install the CUDA toolkit" in no_nvcc.reason
    no_hipcc = choose_backend(Accelerators(nvidia=(), nvcc="nvcc", amd=tuple(MI), hipcc=None))
    assert no_hipcc.backend == "cpu" and "but no hipcc" in no_hipcc.reason


def test_this_machine_without_a_gpu_chooses_the_cpu_and_names_the_compilers_it_saw() -> None:
    choice = choose_backend(detect())
    assert choice.backend in ("cuda", "hip", "cpu") and choice.reason
    if shutil.which("nvidia-smi") is None and shutil.which("rocminfo") is None:  # CI and the development machines
        assert choice.backend == "cpu" and choice.reason.startswith("no NVIDIA or AMD GPU found")
        assert ("though nvcc" in choice.reason) == (shutil.which("nvcc") is not None)
        assert choice.reason.endswith(": the CPU engine")


def test_demo_refuses_a_gpu_backend_this_machine_cannot_build_in_one_line(tmp_path) -> None:
    if choose_backend(detect()).backend == "cuda":
        return  # a CUDA machine can build it
    done = subprocess.run([sys.executable, "-m", "gpuscope.cli", "demo", "--backend", "cuda", "--out",
                           str(tmp_path / "demo")], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpuscope: error: --backend cuda: ")
    assert lines[0].endswith("use --backend auto or cpu")
    assert not (tmp_path / "demo" / "demo-sweep.trace").exists()
