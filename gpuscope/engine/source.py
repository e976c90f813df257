"""The pinned engine source: llama.cpp as vendored in the `llama-cpp-python` 0.3.36 source distribution.

The registry's sdist is the only network source gpuscope needs: it is fetched with pip, checked by sha256 and its
`vendor/llama.cpp` extracted once into the cache (`<cache>/engine-src/llama.cpp-0c1e57098/`). That tree is never
modified: builds patch a copy.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from gpuscope.errors import EngineSourceError
from gpuscope.log import say
from gpuscope.paths import cache_root

PACKAGE = "llama-cpp-python"
VERSION = "0.3.36"
SDIST_NAME = f"llama_cpp_python-{VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
UPSTREAM_COMMIT = "0c1e57098"  # ggml-org/llama.cpp commit the sdist vendors
VENDOR_PREFIX = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"


def download_dir() -> Path:
    return cache_root() / "dl"


def pinned_source_dir() -> Path:
    return cache_root() / "engine-src" / f"llama.cpp-{UPSTREAM_COMMIT}"


def pinned_source() -> Path:
    """The pinned llama.cpp tree, fetched and extracted on first use."""
    target = pinned_source_dir()
    if (target / "CMakeLists.txt").is_file():
        return target
    sdist = fetch_sdist()
    say(f"gpuscope: extracting vendor/llama.cpp from {sdist.name} into {target}")
    extract_vendor_tree(sdist, target)
    return target


def fetch_sdist() -> Path:
    """The verified sdist in the download folder; pip fetches it when it is not there yet."""
    dest = download_dir()
    dest.mkdir(parents=True, exist_ok=True)
    sdist = dest / SDIST_NAME
    if not sdist.is_file():
        say(f"gpuscope: downloading {PACKAGE}=={VERSION} (source distribution, 77 MB) with pip")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   f"{PACKAGE}=={VERSION}", "-d", str(dest)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 or not sdist.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise EngineSourceError(
                f"could not download {PACKAGE}=={VERSION} from the package registry (is it reachable?): "
                + " | ".join(tail))
    digest = sha256_of(sdist)
    if digest != SDIST_SHA256:
        raise EngineSourceError(
            f"{sdist} has sha256 {digest}, expected {SDIST_SHA256}: the file is damaged or not the pinned release; "
            "delete it and run again to download it afresh")
    return sdist


def extract_vendor_tree(sdist: Path, target: Path) -> None:
    """Extract the sdist's vendor/llama.cpp into `target`, atomically (temp dir, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as tmp:
        staging = Path(tmp) / "llama.cpp"
        with tarfile.open(sdist) as archive:
            members = []
            for member in archive.getmembers():
                if member.name.startswith(VENDOR_PREFIX):
                    member.name = member.name[len(VENDOR_PREFIX):]
                    members.append(member)
            if not members:
                raise EngineSourceError(f"{sdist} holds no {VENDOR_PREFIX}: not the expected source distribution")
            archive.extractall(staging, members=members, filter="data")
        try:
            staging.rename(target)
        except OSError:
            # another process finished first: its tree is the same one
            if not (target / "CMakeLists.txt").is_file():
                raise


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def copy_tree(source: Path, dest: Path) -> None:
    """A plain copy of an engine tree (without VCS metadata) to patch and build."""
    shutil.copytree(source, dest, symlinks=True, ignore=shutil.ignore_patterns(".git"))
