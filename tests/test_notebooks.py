"""The notebooks, executed top to bottom in a real Jupyter kernel (nbclient) with small parameters, and their outputs
checked: what the summary cell found, the dashboards' widgets and plotly figures in the outputs, the files written.

Time on 2 cores, engine builds cached: about 1.5 minutes for the four. Notebooks 03 and 04 need the
`test-fixed-topology` build (the fix patch), which nothing else builds: the first run pays for it (minutes)."""
from __future__ import annotations

from pathlib import Path

import pytest

from gpuscope.runs.notebooks import NOTEBOOKS, notebooks_dir, run_notebook, summary_of

WIDGET = "application/vnd.jupyter.widget-view+json"
PLOTLY = "application/vnd.plotly.v1+json"


def outputs(notebook, mimetype: str) -> int:
    return sum(mimetype in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))


def html_outputs(notebook) -> list[str]:
    """The HTML a notebook's objects showed (their _repr_html_), as the kernel sent it."""
    return ["".join(output["data"]["text/html"]) for cell in notebook.cells for output in cell.get("outputs", [])
            if "text/html" in output.get("data", {})]


def errors(notebook) -> list:
    return [output for cell in notebook.cells for output in cell.get("outputs", [])
            if output.get("output_type") == "error"]


def stderr_text(notebook) -> list[str]:
    """What cells wrote to stderr: JupyterLab draws it as an error box, so gpuscope's messages must not go there."""
    return [output["text"] for cell in notebook.cells for output in cell.get("outputs", [])
            if output.get("output_type") == "stream" and output.get("name") == "stderr"]


def execute(name: str, tmp_path: Path, **parameters):
    notebook = run_notebook(name, parameters, cwd=tmp_path, out=tmp_path / f"{name}.ipynb")
    assert errors(notebook) == []
    assert stderr_text(notebook) == []
    return notebook, summary_of(notebook)


def test_every_notebook_has_a_parameters_cell_and_no_outputs_committed() -> None:
    import nbformat

    for name in NOTEBOOKS:
        notebook = nbformat.read(notebooks_dir() / f"{name}.ipynb", as_version=4)
        tags = [cell.metadata.get("tags", []) for cell in notebook.cells]
        assert sum("parameters" in t for t in tags) == 1, name
        assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), name


def test_01_diagnose_slow_decode(engine_build, gemma, tmp_path) -> None:
    notebook, summary = execute("01-diagnose-slow-decode", tmp_path, depths=[0, 128], n_steps=12)
    assert summary["decode_steps"] == 24 and summary["depths"] == [0, 128]
    # the engine check's informational line reaches the reader as plain output (gpuscope.log), not as an error box
    assert any("is up to date" in output.get("text", "") for cell in notebook.cells
               for output in cell.get("outputs", []) if output.get("name") == "stdout")
    # the dashboard drew while the sweep ran, every decode step as a point
    assert summary["dashboard_refreshes_with_new_steps"] >= 2
    assert summary["dashboard_points"] == summary["decode_steps"]
    assert summary["dashboard_memory_locations"] == ["CPU"]
    assert {"step_time_vs_context", "step_breakdown", "memory_over_time"} <= set(summary["figures"])
    assert outputs(notebook, WIDGET) == 1 and outputs(notebook, PLOTLY) == 3
    report = Path(summary["report"])
    assert report.is_file() and report.parent == tmp_path / "gpuscope-out"
    page = report.read_text()
    assert "Plotly.newPlot(" in page and all(f"<code>{finding}</code>" in page for finding in summary["findings"])
    assert (tmp_path / "gpuscope-out" / "01-sweep.trace" / "meta.json").is_file()


def test_02_split_configurations(engine_build, gemma, tmp_path) -> None:
    notebook, summary = execute("02-split-configurations", tmp_path, depths=[0, 64], n_steps=6)
    assert summary["measured"] == sorted(summary["configs"]) and len(summary["configs"]) == 5
    assert sorted(summary["dashboard_series"]) == sorted(summary["configs"])
    assert summary["dashboard_refreshes_with_new_steps"] >= 5
    # the RPC configurations put weights on RPC devices; the layer split copies between them
    assert "CPU" in summary["locations"] and any(loc.startswith("RPC") for loc in summary["locations"])
    assert any(pair.startswith("RPC") and "->RPC" in pair for pair in summary["copy_pairs"])
    # a figure per configuration: the layer split's copies have a matrix of their own, the local ones none
    assert "copy_matrix: rpc0+rpc1 layer" in summary["figures"] and "copy_matrix: cpu" not in summary["figures"]
    assert outputs(notebook, PLOTLY) >= 3
    assert all(ms > 0 for ms in summary["median_ms"].values())
    # the two-GPU section reads the H200 traces: the doctor finds the placement made on purpose, and nothing else
    assert summary["gpu_findings"]["x2-sm-layer-nkvo"] == ["copies.cross-device"]
    assert not any(ids for run, ids in summary["gpu_findings"].items() if run != "x2-sm-layer-nkvo")
    assert summary["gpu_busy_devices"] == ["CUDA0", "CUDA1"]
    busy = summary["gpu_busy_fraction"]  # the layer split's pipeline bubble; the tensor split keeps both GPUs busy
    assert 0.3 < busy["layer"] < 0.6 < 0.7 < busy["tensor"]
    assert summary["gpu_weight_share_ts3_1"]["CUDA0"] > 0.7  # -ts 3/1 asked for 75%
    # the trace, the summary and the findings show themselves as the report's tables and cards, not as text
    shown = html_outputs(notebook)
    assert any("gpuscope trace 02-split.trace" in h and "Events per kind" in h for h in shown)
    assert any("gpuscope summary" in h and "tokens_per_s" in h for h in shown)
    cards = [h for h in shown if "<div class='finding " in h]
    assert len(cards) >= 1 + len(summary["findings"])  # the CPU sweep's findings, and the two-GPU one
    assert any("<code>copies.cross-device</code>" in h for h in cards)


def test_03_before_after_patch(engine_build, tmp_path) -> None:
    notebook, summary = execute("03-before-after-patch", tmp_path, model="tiny", depths=[0, 64], n_steps=16,
                                rounds=2)
    reallocations = summary["reallocations_per_step"]
    assert reallocations["before"] >= 0.4 and reallocations["after"] < reallocations["before"] / 4
    assert summary["re_reserves_per_step"]["before"] >= 1
    assert summary["findings"]["allocator.churn"] == "disappeared"
    assert summary["verdicts"] and all(":" in v for v in summary["verdicts"])
    assert Path(summary["report"]).is_file() and outputs(notebook, PLOTLY) == 1
    shown = [h for h in html_outputs(notebook) if "gpuscope compare:" in h]
    assert len(shown) == 1 and "What differs" in shown[0] and "<code>allocator.churn</code>" in shown[0]


def test_04_speculative_decoding(engine_build, gemma, tmp_path) -> None:
    notebook, summary = execute("04-speculative-decoding", tmp_path, n_tokens=48)
    fixed, early = "0.0", "0.5"
    assert summary["verify_lengths"][fixed] == [5]  # draft_max drafts + the last committed token
    assert len(summary["verify_lengths"][early]) > 1
    assert summary["acceptance"][fixed] > 0.5  # the same model drafts for itself
    assert summary["graph_reuse"][fixed] > summary["graph_reuse"][early]
    assert all(n >= 2 for n in summary["dashboard_refreshes_with_new_steps"].values())
    churn = summary["reallocations_per_step"]
    assert churn["fork harness"] >= 0.5 and churn["with the fix"] < churn["fork harness"] / 4
    assert "allocator.churn" in summary["churn_findings"]["fork harness"]
    assert "allocator.churn" not in summary["churn_findings"]["with the fix"]
    assert outputs(notebook, WIDGET) == 2


def test_a_failing_notebook_fails_the_run(tmp_path) -> None:
    """A broken parameter fails the run with the notebook's own error instead of passing silently."""
    from nbclient.exceptions import CellExecutionError

    with pytest.raises(CellExecutionError, match="missing.gguf"):
        run_notebook("01-diagnose-slow-decode", {"model": str(tmp_path / "missing.gguf")}, cwd=tmp_path)
