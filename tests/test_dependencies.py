"""Every import is declared where it is needed: deptry checks the declarations against the imports, and every module
of the package imports in a process that can see only the base dependencies (what a plain `pip install gpuscope`
gives), so an optional part can only be reached through its extra. About 20 s."""
from __future__ import annotations

import importlib.metadata as metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent

# Run in the child: hide every installed top-level module outside the base dependencies, then import the package.
_CHILD = r"""
import importlib, importlib.abc, json, pkgutil, sys
hidden = set(json.loads(sys.argv[1]))

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in hidden:
            raise ImportError(f"{name} is not a base dependency")
        return None

sys.meta_path.insert(0, Hide())
import gpuscope
failed = {}
for module in pkgutil.walk_packages(gpuscope.__path__, "gpuscope."):
    if module.name.endswith(".__main__"):  # runs the command line when imported: `python -m gpuscope.cli`
        continue
    try:
        importlib.import_module(module.name)
    except Exception as exc:
        failed[module.name] = f"{type(exc).__name__}: {exc}"
from gpuscope.errors import MissingExtraError
from gpuscope.runs.notebooks import run_notebook
try:
    run_notebook("01-diagnose-slow-decode")
    extra_message = None
except MissingExtraError as exc:
    extra_message = str(exc)
print(json.dumps({"failed": failed, "extra_message": extra_message}))
"""


def _base_closure() -> set[str]:
    """The distributions a base install brings: the base dependencies and what they require, transitively."""
    pending = [Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    seen: set[str] = set()
    while pending:
        requirement = pending.pop()
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        if name in seen or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            pending += [Requirement(r) for r in metadata.requires(name) or []]
        except metadata.PackageNotFoundError:
            continue
    return seen


def test_deptry_finds_every_import_declared() -> None:
    deptry = shutil.which("deptry") or pytest.fail("deptry is in the test extra; install gpuscope[test]")
    done = subprocess.run([deptry, "."], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_package_imports_with_its_base_dependencies_alone() -> None:
    base = _base_closure()
    hidden = sorted({module for module, dists in metadata.packages_distributions().items()
                     if module.isidentifier() and not any(re.sub(r"[-_.]+", "-", d).lower() in base for d in dists)
                     and module != "gpuscope"})
    assert {"nbclient", "torch", "perfetto", "hypothesis"} & set(hidden), "the optional packages should be hidden"
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(hidden)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["failed"] == {}
    assert result["extra_message"] == "running a notebook needs nbformat: pip install 'gpuscope[notebooks]'"
