"""The notebooks of notebooks/ (shipped in the wheel as gpuscope/_notebooks): where they are, and running one top to
bottom with parameters (papermill's convention: the values are assigned in a cell inserted after the cell tagged
`parameters`, so the same notebook runs small in CI and large by default).

    from gpuscope.runs.notebooks import run_notebook
    nb = run_notebook("01-diagnose-slow-decode", {"depths": [0, 128], "n_steps": 8}, cwd="out/")
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from gpuscope.errors import ReportError
from gpuscope.extras import optional_import
from gpuscope.paths import shipped_dir

NOTEBOOKS = ("01-diagnose-slow-decode", "02-split-configurations", "03-before-after-patch",
             "04-speculative-decoding")
SUMMARY_MARKER = "gpuscope-summary:"  # the last line a notebook prints: what it found, as JSON


def notebooks_dir() -> Path:
    """The notebooks, shipped with the package."""
    try:
        return shipped_dir("notebooks", f"{NOTEBOOKS[0]}.ipynb")
    except FileNotFoundError as exc:
        raise ReportError(str(exc)) from None


def notebook_path(name: str | os.PathLike) -> Path:
    path = Path(name)
    if path.suffix == ".ipynb" and path.is_file():
        return path
    found = notebooks_dir() / f"{Path(name).stem}.ipynb"
    if not found.is_file():
        raise ReportError(f"no notebook {name!r}; gpuscope's notebooks: {', '.join(NOTEBOOKS)}")
    return found


def copy_notebooks(folder: str | os.PathLike) -> Path:
    """Copy the notebooks into `folder` (to open and edit them in JupyterLab); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in NOTEBOOKS:
        shutil.copyfile(notebook_path(name), folder / f"{name}.ipynb")
    return folder


def with_parameters(notebook, parameters: dict):
    """`notebook` with a cell assigning `parameters` inserted after its `parameters` cell."""
    nbformat = optional_import("nbformat", extra="notebooks", needed_for="running a notebook")
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.get("metadata", {}).get("tags", [])]
    index = tagged[0] if tagged else None
    if index is None:
        raise ReportError("the notebook has no cell tagged 'parameters'")
    source = "# injected parameters\n" + "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(index + 1, cell)
    return notebook


def run_notebook(name: str | os.PathLike, parameters: dict | None = None, *, cwd: str | os.PathLike | None = None,
                 out: str | os.PathLike | None = None, timeout_s: int = 1200):
    """Execute a notebook top to bottom in a fresh kernel (nbclient) with `parameters`; the working directory is
    `cwd` (default: the notebook's folder). Saves the executed notebook to `out` when given, and returns it; a
    failing cell raises nbclient's CellExecutionError (with the cell and its traceback)."""
    nbformat = optional_import("nbformat", extra="notebooks", needed_for="running a notebook")
    nbclient = optional_import("nbclient", extra="notebooks", needed_for="running a notebook")
    path = notebook_path(name)
    notebook = with_parameters(nbformat.read(path, as_version=4), parameters or {})
    workdir = Path(cwd) if cwd is not None else path.parent
    workdir.mkdir(parents=True, exist_ok=True)
    client = nbclient.NotebookClient(notebook, timeout=timeout_s, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute()
    finally:
        if out is not None:
            nbformat.write(notebook, out)
    return notebook


def summary_of(notebook) -> dict:
    """The JSON summary the notebook printed last (its `gpuscope-summary:` line)."""
    for cell in reversed(notebook.cells):
        for output in cell.get("outputs", []):
            text = output.get("text", "") if output.get("output_type") == "stream" else ""
            for line in reversed(text.splitlines()):
                if line.startswith(SUMMARY_MARKER):
                    return json.loads(line[len(SUMMARY_MARKER):])
    raise ReportError("the notebook printed no gpuscope-summary line")
