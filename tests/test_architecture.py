"""The folder tree's promise, kept: stages import only those below them (import-linter's contracts in
pyproject.toml), pure stages run nothing, and imports inside functions are only those of optional or heavy parts,
each with a comment that says why. A few seconds."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
# modules a function may import where it needs them: optional extras, libraries that load a native engine or a
# browser, the dashboard and the SQL database (gpuscope.live and gpuscope.query are callable from `import gpuscope`,
# which must not load the stack or DuckDB)
LOCAL_IMPORTS_ALLOWED = {"torch", "kaleido", "choreographer", "perfetto", "ipywidgets", "IPython", "plotly",
                         "llama_cpp", "gpuscope.live.dashboard", "gpuscope.query.database"}


def _lint(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT_IMPORTS, str(folder / "pyproject.toml"), "--no-cache"], cwd=folder,
                          capture_output=True, text=True, timeout=600, env={"PYTHONPATH": str(folder),
                                                                             "PATH": "/usr/bin:/bin"})


def test_the_stage_order_holds() -> None:
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in done.stdout


def test_the_contract_catches_an_arrow_upwards(tmp_path) -> None:
    """A copy of the package where an analysis module imports the sweep (a run, above it): both contracts say so."""
    shutil.copytree(ROOT / "gpuscope", tmp_path / "gpuscope")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    steps = tmp_path / "gpuscope" / "analysis" / "steps.py"
    steps.write_text(steps.read_text() + "\nfrom gpuscope.runs.sweep import sweep  # noqa\n")
    done = _lint(tmp_path)
    assert done.returncode != 0
    assert "gpuscope.analysis is not allowed to import gpuscope.runs" in done.stdout, done.stdout[-3000:]
    assert "Contracts: 0 kept, 2 broken." in done.stdout


def test_imports_inside_functions_are_optional_parts_with_a_reason() -> None:
    offenders = []
    for path in sorted((ROOT / "gpuscope").rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if not isinstance(inner, (ast.Import, ast.ImportFrom)):
                    continue
                module = inner.module if isinstance(inner, ast.ImportFrom) else inner.names[0].name
                allowed = any(module == name or module.startswith(name + ".") for name in LOCAL_IMPORTS_ALLOWED)
                said = any("#" in lines[i] for i in range(max(inner.lineno - 3, 0), inner.end_lineno))
                if not (allowed and said):
                    offenders.append(f"{path.relative_to(ROOT)}:{inner.lineno}: {module}")
    assert not offenders, offenders
