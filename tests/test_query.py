"""SQL over many traces (gpuscope.query, `gpuscope query`) on the recorded datasets: the examples of docs/query.md
give the answers gpuscope's Python API gives, every row says its trace, missing tables and columns are tolerated,
bad traces and bad queries are one clear line, and a set of traces larger than DuckDB's memory limit is queried
within it. About 30 s."""
from __future__ import annotations

import io
import json
import re
import shutil
import warnings
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import gpuscope
from gpuscope import cli
from gpuscope.analysis import Analysis
from gpuscope.bench.query import copy_traces, decoded_bytes, default_source
from gpuscope.errors import QueryError, TraceError
from gpuscope.query.database import TraceDatabase
from gpuscope.query.traces import SkippedTraceWarning
from gpuscope.trace.model import load_trace

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT / "datasets"
ALL = sorted(DATASETS.glob("*/*.trace"))


def _doc_examples() -> dict[str, str]:
    """docs/query.md's SQL blocks, by their first line's comment."""
    blocks = re.findall(r"```sql\n(.*?)```", (ROOT / "docs" / "query.md").read_text(), re.S)
    return {block.splitlines()[0].removeprefix("-- ").strip(): block for block in blocks}


EXAMPLES = _doc_examples()


def test_the_docs_have_the_three_examples() -> None:
    assert set(EXAMPLES) == {"median decode step time per configuration and depth, per build",
                             "which traces had a FlashAttention route with no kernel",
                             "allocator re-plans per step across runs"}


def test_median_decode_step_per_configuration_and_depth_per_build() -> None:
    got = gpuscope.query(EXAMPLES["median decode step time per configuration and depth, per build"], ALL)
    frames = []
    for path in ALL:
        trace = load_trace(path)
        steps = trace.tables.get("steps")
        if steps is not None and "depth" in steps:
            frames.append(steps.assign(build=trace.meta["engine"]["name"]))
    steps = pd.concat(frames, ignore_index=True)
    decode = steps[(steps["phase"] == "decode") & steps["depth"].notna()]
    expected = decode.groupby(["build", "config", "depth"]).agg(steps=("wall_ns", "size"),
                                                                median_ms=("wall_ns", "median")).reset_index()
    assert len(got) == len(expected) == 42
    assert got[["build", "config", "depth", "steps"]].astype(str).values.tolist() == \
        expected[["build", "config", "depth", "steps"]].astype(str).values.tolist()
    np.testing.assert_allclose(got["median_ms"], (expected["median_ms"] / 1e6).round(3))


def test_traces_with_a_flashattention_route_with_no_kernel() -> None:
    got = gpuscope.query(EXAMPLES["which traces had a FlashAttention route with no kernel"], ALL)
    expected = {}
    for path in ALL:
        none = Analysis(path).fa_none
        if len(none):
            expected[path.name.removesuffix(".trace")] = (len(none), ", ".join(sorted(set(none["reason"]))),
                                                          int(none["head_dim_k"].min()))
    assert {row.trace: (row.plans, row.reasons, row.head_dim) for row in got.itertuples()} == expected
    assert "flashattention-with-no-kernel-head-size-48" in expected and "d160-fa1" in expected


def test_allocator_replans_per_step_across_runs() -> None:
    got = gpuscope.query(EXAMPLES["allocator re-plans per step across runs"], ALL)
    rows = []
    for path in ALL:
        analysis = Analysis(path)
        if not len(analysis.table("gallocr_realloc")):
            continue
        per_step = analysis.allocator.merge(analysis.steps[["step", "run"]], on="step")
        for run, group in per_step.groupby("run"):
            rows.append((path.name.removesuffix(".trace"), int(run), len(group), int((group["reallocs"] > 0).sum()),
                         int(group["reallocs"].sum())))
    assert [(r.trace, r.run, r.steps, r.steps_replanned, r.replans) for r in got.itertuples()] == sorted(rows)
    assert got["per_step"].tolist() == [0.48, 0.06, 0.06]


def test_every_row_says_its_trace() -> None:
    paths = [DATASETS / "cpu" / "cpu-sweep-gemma3.trace", DATASETS / "h200x2-splits" / "x2-sm-none.trace"]
    got = gpuscope.query("SELECT trace, count(*) AS n, max(seq) AS last FROM sync GROUP BY trace ORDER BY trace",
                         paths)
    expected = sorted((path.name.removesuffix(".trace"), len(t := load_trace(path).tables["sync"]),
                       int(t["seq"].max())) for path in paths)
    assert [tuple(row) for row in got.itertuples(index=False)] == expected
    traces = gpuscope.query("SELECT trace, path, source, build, devices, configs, workload, "
                            "meta ->> '$.engine.backend' AS backend FROM traces ORDER BY trace", paths)
    assert traces["path"].tolist() == [str(p.resolve()) for p in paths]
    assert traces["source"].tolist() == ["sweep", "record"]
    assert traces["build"].tolist() == ["cpu", "cuda"] == [b for b in traces["backend"]]
    assert [list(d) for d in traces["devices"]] == [["CPU"], ["CPU", "CUDA0"]]
    assert [list(c) for c in traces["configs"]] == [["auto"], []]
    assert traces["workload"].tolist()[0] == "sweep"


def test_folders_of_the_same_name_are_told_apart(tmp_path) -> None:
    source = DATASETS / "cpu" / "cpu-lost-events.trace"
    for parent in ("a", "b"):
        shutil.copytree(source, tmp_path / parent / "run.trace")
    got = gpuscope.query("SELECT trace, count(*) AS n FROM steps GROUP BY trace ORDER BY trace",
                         f"{tmp_path}/*/run.trace")
    assert got["trace"].tolist() == ["a/run", "b/run"]
    assert got["n"].tolist() == [len(load_trace(source).tables["steps"])] * 2


def test_traces_lacking_a_table_or_columns() -> None:
    sweep, record = DATASETS / "cpu" / "cpu-sweep-gemma3.trace", DATASETS / "h200x2-splits" / "x2-kernels-layer.trace"
    with TraceDatabase([sweep, record]) as database:
        kernels = database.df("SELECT trace, count(*) AS n FROM kernels GROUP BY trace")
        assert kernels.values.tolist() == [["x2-kernels-layer", len(load_trace(record).tables["kernels"])]]
        # a kind no trace has: no rows, the format's columns
        assert database.df("SELECT * FROM mark").empty
        columns = database.df("DESCRIBE mark")
        assert columns["column_name"].tolist()[:5] == ["trace", "seq", "ts_ns", "tid", "device"]
        assert database.df("SELECT count(*) AS n FROM spec_rounds")["n"].tolist() == [0]
    # the steps of a session (no `depth`, no `run`) beside a combined sweep's (both): null where a trace has none
    session, sweep = DATASETS / "cpu" / "cpu-graph-rebuilt.trace", DATASETS / "h200-bench-doctor" / "clean-decode.trace"
    got = gpuscope.query("SELECT trace, count(*) AS n, count(depth) AS with_depth, count(run) AS with_run "
                         "FROM steps GROUP BY trace ORDER BY trace", [session, sweep])
    assert got.values.tolist() == [["clean-decode", 100, 100, 100], ["cpu-graph-rebuilt", 49, 0, 0]]


def _damaged_copies(tmp_path) -> dict[str, Path]:
    good = DATASETS / "cpu" / "cpu-lost-events.trace"
    no_meta = tmp_path / "no-meta.trace"
    shutil.copytree(good, no_meta)
    (no_meta / "meta.json").unlink()
    truncated = tmp_path / "truncated.trace"
    shutil.copytree(good, truncated)
    table = truncated / "tables" / "sync.parquet"
    table.write_bytes(table.read_bytes()[:200])
    not_a_trace = tmp_path / "notes.txt"
    not_a_trace.write_text("not a trace\n")
    return {"good": good, "no meta": no_meta, "truncated": truncated, "not a trace": not_a_trace}


def test_a_bad_trace_among_good_ones_is_refused_by_name_or_skipped(tmp_path, capsys) -> None:
    paths = _damaged_copies(tmp_path)
    good = paths["good"]
    for name in ("no meta", "truncated", "not a trace"):
        bad = paths[name]
        with pytest.raises(TraceError) as refused:
            gpuscope.query("SELECT count(*) FROM sync", [good, bad])
        assert str(bad) in str(refused.value) and "\n" not in str(refused.value)
        assert "--skip-bad" in str(refused.value)
    assert "no meta.json" in str(pytest.raises(TraceError, gpuscope.query, "SELECT 1", [paths["no meta"]]).value)
    assert "not a readable Parquet table" in str(
        pytest.raises(TraceError, gpuscope.query, "SELECT 1", [paths["truncated"]]).value)

    with pytest.warns(SkippedTraceWarning) as skipped:
        got = gpuscope.query("SELECT trace, count(*) AS n FROM sync GROUP BY trace", list(paths.values()),
                             skip_bad=True)
    assert got.values.tolist() == [["cpu-lost-events", len(load_trace(good).tables["sync"])]]
    assert len(skipped) == 3
    with pytest.raises(QueryError, match="none of the 3 traces given can be read"), \
            warnings.catch_warnings(record=True):
        gpuscope.query("SELECT 1", [paths["no meta"], paths["truncated"], paths["not a trace"]], skip_bad=True)

    # the command line: one line and status 2; with --skip-bad a warning per trace and the result
    assert cli.main(["query", "SELECT count(*) FROM sync", str(good), str(paths["truncated"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gpuscope: error: ") and "truncated.trace" in err
    assert cli.main(["query", "SELECT count(*) AS n FROM sync", str(good), str(paths["truncated"]),
                     "--skip-bad", "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert out == f"n\n{len(load_trace(good).tables['sync'])}\n"
    assert err.startswith("gpuscope: warning: skipped ") and "truncated.trace" in err


def test_damage_inside_the_data_is_named_when_a_query_reads_it(tmp_path) -> None:
    trace = tmp_path / "pages.trace"
    shutil.copytree(DATASETS / "cpu" / "cpu-lost-events.trace", trace)
    table = trace / "tables" / "sync.parquet"
    first_page = pq.read_metadata(table).row_group(0).column(0)
    data = bytearray(table.read_bytes())
    start = first_page.dictionary_page_offset or first_page.data_page_offset
    data[start:start + first_page.total_compressed_size] = b"\x5a" * first_page.total_compressed_size
    table.write_bytes(bytes(data))  # the footer still reads: opening the set passes
    with TraceDatabase([DATASETS / "cpu" / "cpu-sweep-gemma3.trace", trace]) as database:
        assert database.df("SELECT count(*) AS n FROM steps")["n"].tolist() == [67 + 49]
        with pytest.raises(TraceError, match=re.escape(f"{table}: damaged Parquet data")):
            database.df("SELECT sum(seq) FROM sync")


def test_query_errors_are_one_clear_line(tmp_path) -> None:
    trace = DATASETS / "cpu" / "cpu-lost-events.trace"
    with TraceDatabase(trace) as database:
        for sql, message in [
                ("SELECT nope FROM steps", 'Binder Error: Referenced column "nope" not found'),
                ("SELECT * FROM stepz", "Table with name stepz does not exist"),
                ("SELEC 1", 'syntax error at or near "SELEC"'),
                (f"COPY (SELECT * FROM steps) TO '{tmp_path}/out.csv'", "one SELECT statement (found COPY)"),
                ("SELECT 1; SELECT 2", "one SELECT statement (found SELECT, SELECT)"),
                ("", "found nothing")]:
            with pytest.raises(QueryError) as failed:
                database.df(sql)
            assert message in str(failed.value) and "\n" not in str(failed.value), str(failed.value)
        assert "(tables: traces, buffer, " in str(pytest.raises(QueryError, database.df, "SELECT * FROM x").value)
    assert not (tmp_path / "out.csv").exists()
    with pytest.raises(QueryError, match="no traces to query"):
        gpuscope.query("SELECT 1", [])
    with pytest.raises(QueryError, match="matches no trace"):
        gpuscope.query("SELECT 1", f"{tmp_path}/*.trace")
    with pytest.raises(QueryError, match="given twice"):
        gpuscope.query("SELECT 1", [trace, trace.parent / ".." / "cpu" / trace.name])
    with pytest.raises(QueryError, match="memory limit '2XB'"):
        gpuscope.query("SELECT 1", trace, memory_limit="2XB")


def test_the_command_line_prints_table_csv_and_json(capsys) -> None:
    traces = [str(path) for path in sorted((DATASETS / "cpu").glob("*.trace"))]
    sql = "SELECT trace, count(*) AS syncs FROM sync GROUP BY trace ORDER BY trace"
    expected = gpuscope.query(sql, traces)
    assert cli.main(["query", sql, *traces, "--rows", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["trace", "syncs"] and len(out) == 5
    assert out[1].split() == [expected["trace"][0], str(expected["syncs"][0])]
    assert out[-1] == f"({len(expected)} rows; 3 shown, --rows N shows more)"
    assert cli.main(["query", sql, *traces, "--format", "csv"]) == 0
    assert pd.read_csv(io.StringIO(capsys.readouterr().out)).equals(expected)
    assert cli.main(["query", "SELECT trace, devices FROM traces ORDER BY trace", *traces, "--format", "json",
                     "--rows", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows == [{"trace": "cpu-allocator-churn", "devices": ["CPU", "RPC0", "RPC1"]},
                    {"trace": "cpu-eval-callback-syncs", "devices": ["CPU"]}]
    assert cli.main(["query", "SELECT * FROM steps WHERE false", traces[0]]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["trace", "step"] and out[1] == "(0 rows)"


def test_a_relation_when_asked() -> None:
    relation = gpuscope.query("SELECT trace, count(*) AS n FROM ubatch GROUP BY trace", ALL[:3], relation=True)
    assert isinstance(relation, duckdb.DuckDBPyRelation)
    assert len(relation.df()) == 3


def test_traces_larger_than_the_memory_limit_are_queried_within_it(tmp_path) -> None:
    """14 copies of the largest recorded table (57,410 GPU kernels of the two-H200 tensor split) under distinct
    names: 364 MB of tables decoded, against a 64 MB limit. A streaming aggregate, and a DISTINCT whose state holds
    every (trace, kernel name, start): it must spill, and gives the answer pandas gives on one copy, times 14."""
    source = default_source()
    copies = copy_traces(source, 14, tmp_path / "copies")
    assert 14 * decoded_bytes(source) > 5 * 64e6
    recorded = {path: (path.stat().st_size, path.stat().st_mtime_ns) for path in (tmp_path / "copies").rglob("*")}
    kernels = load_trace(source).tables["kernels"]
    spill = tmp_path / "spill"
    with TraceDatabase(copies, memory_limit="64MB", temp_directory=spill) as database:
        by_family = database.df("SELECT trace, family, count(*) AS n, sum(duration_ns)::BIGINT AS ns FROM kernels "
                                "GROUP BY ALL ORDER BY trace, family")
        distinct = database.df("SELECT count(*) AS launches FROM (SELECT DISTINCT trace, name, ts_ns FROM kernels)")
        assert any(spill.iterdir())  # DuckDB spilled what did not fit
        assert database.df("SELECT current_setting('memory_limit') AS limit")["limit"][0] == "61.0 MiB"
    expected = kernels.groupby("family").agg(n=("ts_ns", "size"), ns=("duration_ns", "sum")).reset_index()
    assert by_family["trace"].unique().tolist() == [f"copy-{i:04d}" for i in range(14)]
    for _, one in by_family.groupby("trace"):
        assert one[["family", "n", "ns"]].values.tolist() == expected.values.tolist()
    assert distinct["launches"][0] == 14 * len(kernels[["name", "ts_ns"]].drop_duplicates())
    assert not spill.exists()  # DuckDB made the folder for its spill files and removed it
    assert {path: (path.stat().st_size, path.stat().st_mtime_ns) for path in (tmp_path / "copies").rglob("*")} == \
        recorded  # nothing recorded was touched


def test_bench_query_refuses_trace_counts_that_are_not_whole_numbers(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["bench", "query", "--traces", "1,x"])
    assert exited.value.code == 2
    assert "'1,x' is not a comma-separated list of whole counts" in capsys.readouterr().err
