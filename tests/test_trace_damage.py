"""Damaged traces: every command that reads a trace turns every damage into one line on stderr and exit status 2,
never a traceback or a hang; valid traces with no events, or of a session that crashed mid-decode, are read.

The fuzz corpus mutates real recorded traces from datasets/ (a record of an engine abort, a session with lost
events, a sweep with native stacks, a two-GPU sweep with a kernels table): meta.json bytes and values, Parquet
bytes, columns and types, deterministically and with hypothesis. Commands run in-process through
gpuscope.cli.main (a SIGALRM guard turns a hang into a failure) and, for a handful, as real subprocesses.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuscope import cli
from gpuscope.errors import TraceError
from gpuscope.paths import datasets_dir
from gpuscope.trace.format import COUNT_MAX, META_MAX_DEPTH, parse_meta, required_columns
from gpuscope.trace.model import Trace, load_trace, save_trace

BASES = {"abort": "traces/cpu-abort-mid-decode.trace", "lost": "cpu/cpu-lost-events.trace",
         "stacks": "cpu/cpu-stacks-gemma3.trace", "kernels": "h200x2-splits/x2-kernels-layer.trace"}
# the tables each base damages column by column: all of the small ones, the collectors' in the larger ones
DAMAGED_TABLES = {"abort": None, "lost": None, "stacks": ("cpu_stacks", "steps"), "kernels": ("kernels",)}
COMMAND_SECONDS = 30  # a hang, not a slow machine: the slowest command here takes ~2 s on two busy cores


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


def run_command(argv: list[str]) -> tuple[int, str, str]:
    """gpuscope.cli.main(argv) in this process: (exit status, stdout, stderr); an exception escaping is a
    traceback a user would see, reported with its mutation by the caller."""
    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(COMMAND_SECONDS)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = cli.main(argv)
            except SystemExit as exc:  # argparse
                status = exc.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return status, out.getvalue(), err.getvalue()


def outcome_problem(argv: list[str]) -> str | None:
    """None when the command ended normally or with exit 2 and one error line; else what went wrong."""
    try:
        status, _, err = run_command(argv)
    except _Hang:
        return f"no answer within {COMMAND_SECONDS} s"
    except Exception as exc:  # noqa: BLE001 - exactly what the test hunts
        return f"traceback: {type(exc).__name__}: {str(exc)[:200]}"
    if status == 0:
        return None
    lines = err.strip().splitlines()
    if status == 2 and len(lines) == 1 and lines[0].startswith("gpuscope: error: "):
        return None
    return f"exit {status}, stderr {err[-300:]!r}"


class Corpus:
    """Working copies of the base traces: a mutation rewrites one file of a copy, the commands run, the file is
    put back (a copy per mutation would cost more than the doctor)."""

    def __init__(self, root: Path):
        self.root = root
        self.traces = {}
        for name, relative in BASES.items():
            self.traces[name] = root / f"{name}.trace"
            shutil.copytree(datasets_dir() / relative, self.traces[name])
        self.outputs = root / "out"
        self.outputs.mkdir()
        self.runs = 0
        self.problems: list[str] = []

    def tables(self, name: str) -> list[Path]:
        return sorted((self.traces[name] / "tables").glob("*.parquet"))

    @contextlib.contextmanager
    def mutated(self, path: Path):
        """`path` (a file of a working copy) may be rewritten or replaced inside; afterwards it is restored."""
        original = path.read_bytes()
        try:
            yield path
        finally:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            path.write_bytes(original)

    def check(self, name: str, what: str, commands=("doctor",)) -> None:
        trace = str(self.traces[name])
        argvs = {"doctor": ["doctor", trace], "doctor-json": ["doctor", trace, "--json"],
                 "report": ["report", trace, "-o", str(self.outputs / "report.html")],
                 "compare": ["compare", str(datasets_dir() / BASES[name]), trace],
                 "export": ["export", trace, "--perfetto", str(self.outputs / "trace.pftrace")]}
        for command in commands:
            self.runs += 1
            problem = outcome_problem(argvs[command])
            if problem:
                self.problems.append(f"{name} {what} | {command}: {problem}")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    return Corpus(tmp_path_factory.mktemp("damage"))


# -- the deterministic corpus -----------------------------------------------------------------------------------

def _meta_byte_damage(meta: bytes) -> dict[str, bytes]:
    head = b'{"format": "gpuscope-trace", "format_version": 1, "x": '
    return {
        "empty": b"", "latin-1 byte": b"\xff" + meta, "invalid utf-8 inside": meta[:40] + b"\xc3\x28" + meta[40:],
        "utf-16": meta.decode().encode("utf-16"), "bom": b"\xef\xbb\xbf" + meta,
        **{f"cut at {share:.0%}": meta[:int(len(meta) * share)] for share in (0.01, 0.3, 0.5, 0.99)},
        **{f"top level {text}": text.encode() for text in ("[]", "1", '"x"', "null", "true", "[{}]", "1e400")},
        "5001 digits": head + b"9" * 5001 + b"}", "4300 digits": head + b"9" * 4300 + b"}",
        "25 digits": head + b"1" * 25 + b"}", "-2^63-1": head + str(-(1 << 63) - 1).encode() + b"}",
        "1e400": head + b"1e400}", "NaN": head + b"NaN}", "-Infinity": head + b"-Infinity}",
        "nested 40": head + b"[" * 40 + b"]" * 40 + b"}", "nested 100000": head + b"[" * 100000 + b"]" * 100000 + b"}",
        "lone surrogate": head + b'"\\udcff"}', "surrogate key": b'{"\\ud800": 1, ' + head[1:] + b"1}",
        "nul": head + b'"\\u0000"}', "over 16 MiB": head + b'"' + b"x" * (16 << 20) + b'"}',
        "other format": meta.replace(b'"gpuscope-trace"', b'"chrome-trace"', 1),
        "format version 2": meta.replace(b'"format_version": 1', b'"format_version": 2', 1),
    }


_WRONG_VALUES = [None, -1, 1e30, 10 ** 30, 2 ** 60, "x", "", [], {}, True, [[1]], {"a": {"b": []}}, 1.5, [None]]


def _meta_paths(meta, path=()):
    """Every key path of meta.json, parents before children; long runs of siblings (op names) cut to a few."""
    items = list(meta.items()) if isinstance(meta, dict) else list(enumerate(meta)) if isinstance(meta, list) else []
    for key, value in items[:6]:
        yield path + (key,)
        yield from _meta_paths(value, path + (key,))


def _set(meta, path, value):
    for key in path[:-1]:
        meta = meta[key]
    if value is _DELETE:
        del meta[path[-1]]
    else:
        meta[path[-1]] = value


_DELETE = object()


def test_deterministic_corpus(corpus):
    for name in BASES:
        meta_path = corpus.traces[name] / "meta.json"
        meta_bytes = meta_path.read_bytes()
        for what, data in _meta_byte_damage(meta_bytes).items():
            with corpus.mutated(meta_path):
                meta_path.write_bytes(data)
                corpus.check(name, f"meta.json {what}")
        meta = json.loads(meta_bytes) if name in ("abort", "lost") else {}  # the larger ones: by hypothesis
        for index, path in enumerate(_meta_paths(meta)):
            for value in (_WRONG_VALUES + [_DELETE])[index % 3::5]:  # each key with a rotating three
                changed = json.loads(meta_bytes)
                _set(changed, path, value)
                with corpus.mutated(meta_path):
                    meta_path.write_text(json.dumps(changed))
                    corpus.check(name, f"meta {'.'.join(map(str, path))} = {value if value is not _DELETE else 'deleted'}")
        for table_path in corpus.tables(name):
            if DAMAGED_TABLES[name] is None or table_path.stem in DAMAGED_TABLES[name]:
                _damage_table(corpus, name, table_path)
    assert corpus.runs > 900, corpus.runs
    assert not corpus.problems, "\n".join(corpus.problems[:30])


def _damage_table(corpus: Corpus, name: str, path: Path) -> None:
    data = path.read_bytes()
    table = pq.read_table(path)
    byte_damage = {"0 bytes": b"", "magic only": b"PAR1", "half": data[:len(data) // 2], "footer cut": data[:-9],
                   "footer length": data[:-8] + (1 << 31).to_bytes(4, "little") + b"PAR1",
                   "footer bytes": data[:-40] + bytes(range(32)) + data[-8:],
                   "data bytes": data[:4] + bytes(255 - b for b in data[4:200]) + data[200:]}
    for what, damaged in byte_damage.items():
        with corpus.mutated(path):
            path.write_bytes(damaged)
            corpus.check(name, f"{path.name} {what}")
    required = required_columns(path.stem) or {}
    for column in table.column_names:
        # columns the format does not require (a session's tags, the steps' counts) may go: once per base
        if column in required or path == corpus.tables(name)[0]:
            with corpus.mutated(path):
                pq.write_table(table.drop([column]), path)
                corpus.check(name, f"{path.name} without {column}")
        column_type = table.schema.field(column).type
        if not (pa.types.is_dictionary(column_type) or pa.types.is_large_string(column_type)
                or pa.types.is_string(column_type)):
            with corpus.mutated(path):
                texts = pa.array([str(value) for value in table.column(column).to_pylist()], pa.string())
                pq.write_table(table.set_column(table.column_names.index(column), column, texts), path)
                corpus.check(name, f"{path.name} {column} as text")
    with corpus.mutated(path):
        pq.write_table(table.slice(0, 0), path)  # valid: a table with no rows
        corpus.check(name, f"{path.name} with no rows")
    with corpus.mutated(path):
        os.unlink(path)
        os.mkfifo(path)  # reading it would block forever
        corpus.check(name, f"{path.name} a FIFO")


def test_every_command_on_the_same_damage(corpus):
    """report, compare and export share the loading, and each has its own readers of what loads."""
    commands = ("doctor-json", "report", "compare", "export")
    for name in ("abort", "lost"):
        meta_path = corpus.traces[name] / "meta.json"
        for what, data in list(_meta_byte_damage(meta_path.read_bytes()).items())[::4]:
            with corpus.mutated(meta_path):
                meta_path.write_bytes(data)
                corpus.check(name, f"meta.json {what}", commands)
        for table_path in corpus.tables(name)[::4]:
            with corpus.mutated(table_path):
                table_path.write_bytes(table_path.read_bytes()[:100])
                corpus.check(name, f"{table_path.name} cut", commands)
        for table_path in corpus.tables(name)[1:2]:
            with corpus.mutated(table_path):
                pq.write_table(pq.read_table(table_path).slice(0, 0), table_path)
                corpus.check(name, f"{table_path.name} with no rows", commands)
    assert not corpus.problems, "\n".join(corpus.problems[:30])


# -- hypothesis: random values, bytes and types ----------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
def fuzz(examples: int):
    """Derandomized (the same corpus every run: CI time stays put, a failure reproduces), no deadline."""
    return settings(max_examples=examples, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@fuzz(200)  # mostly refused on load: cheap
@given(data=st.data())
def test_fuzzed_meta_values(corpus, data):
    name = data.draw(st.sampled_from(["abort", "lost", "stacks"]))
    meta_path = corpus.traces[name] / "meta.json"
    meta = json.loads(meta_path.read_bytes())
    path = data.draw(st.sampled_from(list(_meta_paths(meta))))
    value = data.draw(json_values)
    _set(meta, path, value)
    with corpus.mutated(meta_path):
        meta_path.write_text(json.dumps(meta))
        corpus.check(name, f"meta {'.'.join(map(str, path))} = {value!r}")
    assert not corpus.problems, "\n".join(corpus.problems[:30])


@fuzz(80)
@given(data=st.data())
def test_fuzzed_parquet_bytes(corpus, data):
    name = data.draw(st.sampled_from(list(BASES)))
    path = data.draw(st.sampled_from(corpus.tables(name)))
    damaged = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    with corpus.mutated(path):
        path.write_bytes(bytes(damaged))
        corpus.check(name, f"{path.name} bytes changed")
    assert not corpus.problems, "\n".join(corpus.problems[:30])


_ARROW_TYPES = [pa.int8(), pa.uint64(), pa.int64(), pa.float64(), pa.bool_(), pa.string(), pa.null(),
                pa.dictionary(pa.int8(), pa.string()), pa.list_(pa.int64())]


@fuzz(50)  # mostly valid traces the doctor reads in full: the dearest
@given(data=st.data())
def test_fuzzed_column_types_and_values(corpus, data):
    """A column cast to another type (values wrapped or lost as the cast goes), or given extreme values."""
    name = data.draw(st.sampled_from(["abort", "lost", "stacks"]))
    path = data.draw(st.sampled_from(corpus.tables(name)))
    table = pq.read_table(path)
    column = data.draw(st.sampled_from(table.column_names))
    arrow_type = data.draw(st.sampled_from(_ARROW_TYPES + [table.schema.field(column).type] * 3))
    values = data.draw(st.sampled_from(["cast", "zero", "extreme", "null"]))
    try:
        new = table.column(column).cast(arrow_type, safe=False)
    except (pa.ArrowException, ValueError):
        new = pa.nulls(len(table), arrow_type)
    if values != "cast" and (pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)):
        extreme = (-1 if pa.types.is_signed_integer(arrow_type) else 1) * (
            float("inf") if pa.types.is_floating(arrow_type) else (1 << (arrow_type.bit_width - 1)) - 1)
        fill = {"zero": 0, "extreme": extreme, "null": None}[values]
        new = pa.array([fill] * len(table), arrow_type)
    with corpus.mutated(path):
        pq.write_table(table.set_column(table.column_names.index(column), column, new), path)
        corpus.check(name, f"{path.name} {column} {arrow_type} {values}")
    assert not corpus.problems, "\n".join(corpus.problems[:30])


# -- real subprocesses ------------------------------------------------------------------------------------------

def test_damaged_traces_in_real_subprocesses(tmp_path):
    """The real command line, three damages at once in parallel: one line on stderr, exit 2, no hang."""
    base = datasets_dir() / BASES["abort"]
    cases = {}
    for what in ("meta-bytes", "column-missing", "fifo"):
        cases[what] = shutil.copytree(base, tmp_path / f"{what}.trace")
    (cases["meta-bytes"] / "meta.json").write_bytes(b"\xff\xfe{}")
    sync = pq.read_table(cases["column-missing"] / "tables" / "sync.parquet")
    pq.write_table(sync.drop(["reason"]), cases["column-missing"] / "tables" / "sync.parquet")
    (cases["fifo"] / "tables" / "sync.parquet").unlink()
    os.mkfifo(cases["fifo"] / "tables" / "sync.parquet")
    commands = {"meta-bytes": ["doctor", str(cases["meta-bytes"])],
                "column-missing": ["report", str(cases["column-missing"]), "-o", str(tmp_path / "r.html")],
                "fifo": ["export", str(cases["fifo"]), "--perfetto", str(tmp_path / "x.pftrace")]}
    running = {what: subprocess.Popen([sys.executable, "-m", "gpuscope.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for what, argv in commands.items()}
    expected = {"meta-bytes": "not UTF-8", "column-missing": "no column 'reason'", "fifo": "not a regular file"}
    for what, process in running.items():
        try:
            _, err = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail(f"{what}: gpuscope hung")
        assert process.returncode == 2, (what, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (what, err)
        assert expected[what] in err, (what, err)


# -- what each damage says ----------------------------------------------------------------------------------------

def _copy(name: str, tmp_path: Path) -> Path:
    return shutil.copytree(datasets_dir() / BASES[name], tmp_path / f"{name}.trace")


def _error_of(argv: list[str]) -> str:
    status, _, err = run_command(argv)
    assert status == 2 and len(err.strip().splitlines()) == 1, (status, err)
    return err.strip()


@pytest.mark.parametrize("value, said", [
    (1e30, "ring.written is 1e+30, expected a count"), (10 ** 30, "beyond 64 bits"),
    (2 ** 60, f"expected a count (an integer from 0 to {COUNT_MAX})"), (-1, "ring.written is -1"),
    ("264", 'ring.written is "264"')])
def test_absurd_ring_counts_are_refused_not_reported_as_overwritten(tmp_path, value, said):
    trace = _copy("abort", tmp_path)
    meta = json.loads((trace / "meta.json").read_text())
    meta["ring"]["written"] = value
    (trace / "meta.json").write_text(json.dumps(meta))
    error = _error_of(["doctor", str(trace)])
    assert said in error and str(trace / "meta.json") in error


def test_each_damage_is_named_in_one_line(tmp_path):
    trace = _copy("abort", tmp_path)
    meta_path, sync = trace / "meta.json", trace / "tables" / "sync.parquet"
    original, table = meta_path.read_bytes(), pq.read_table(sync)
    said = {}
    for what, data in {"bytes": b"\xff" + original, "object": b"[]", "digits": b'{"a": ' + b"7" * 5001 + b"}",
                       "nesting": b'{"a": ' + b"[" * (META_MAX_DEPTH + 1) + b"]" * (META_MAX_DEPTH + 1) + b"}",
                       "json": original[:-20]}.items():
        meta_path.write_bytes(data)
        said[what] = _error_of(["doctor", str(trace)])
    meta_path.write_bytes(original)
    sync.write_bytes(b"")
    said["empty table"] = _error_of(["report", str(trace), "-o", str(tmp_path / "r.html")])
    pq.write_table(table.drop(["backend"]), sync)
    said["column"] = _error_of(["compare", str(trace), str(trace)])
    pq.write_table(table.set_column(table.column_names.index("duration_ns"), "duration_ns",
                                    table.column("duration_ns").cast(pa.float64())), sync)
    said["type"] = _error_of(["export", str(trace), "--perfetto", str(tmp_path / "t.pftrace")])
    pq.write_table(table.set_column(table.column_names.index("tid"), "tid",
                                    pa.array([None] + table.column("tid").to_pylist()[1:], pa.uint32())), sync)
    said["missing"] = _error_of(["doctor", str(trace)])
    assert "meta.json: not UTF-8 text (byte 0)" in said["bytes"]
    assert "meta.json: holds [], not a JSON object" in said["object"]
    assert "(5001 digits) is beyond 64 bits" in said["digits"]
    assert f"nested more than {META_MAX_DEPTH} levels deep" in said["nesting"]
    assert "meta.json: damaged metadata (" in said["json"]
    assert "sync.parquet: not a readable Parquet table (" in said["empty table"]
    assert "sync.parquet: no column 'backend' (a sync table has seq, ts_ns, tid, device, " in said["column"]
    assert "sync.parquet: column 'duration_ns' is double, expected an integer" in said["type"]
    assert "sync.parquet: column 'tid' has missing values" in said["missing"]
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "t.pftrace").exists()


def test_every_shipped_trace_has_the_documented_format():
    """The checks accept every dataset (footers only: the data is read by the dataset tests)."""
    from gpuscope.trace.format import check_table

    traces = sorted(datasets_dir().glob("**/*.trace"))
    assert len(traces) >= 30
    for trace in traces:
        parse_meta((trace / "meta.json").read_bytes(), trace / "meta.json")
        for table in (trace / "tables").glob("*.parquet"):
            check_table(table, table.stem)


def test_a_table_the_format_does_not_define_is_kept(tmp_path):
    trace = _copy("abort", tmp_path)
    pq.write_table(pa.table({"ts_ns": pa.array([5], pa.int64()), "note": ["from a newer writer"]}),
                   trace / "tables" / "annotations.parquet")
    assert list(load_trace(trace).tables["annotations"]["note"]) == ["from a newer writer"]
    for argv in (["doctor", str(trace)], ["compare", str(trace), str(trace)],
                 ["export", str(trace), "--perfetto", str(tmp_path / "t.pftrace")]):
        assert run_command(argv)[0] == 0
    # a column the format defines keeps its type wherever it appears
    pq.write_table(pa.table({"ts_ns": ["soon"]}), trace / "tables" / "annotations.parquet")
    with pytest.raises(TraceError, match="annotations.parquet: column 'ts_ns' is string, expected an integer"):
        load_trace(trace)


# -- valid traces the commands must read ----------------------------------------------------------------------------

def test_compare_doctor_report_export_work_on_traces_with_no_events(tmp_path):
    bare = save_trace(Trace(meta={"source": "record", "ring": {"written": 0, "read": 0, "lost": 0}}),
                      tmp_path / "bare.trace")
    emptied = _copy("lost", tmp_path)  # a real session trace whose every table lost its rows
    for table in (emptied / "tables").glob("*.parquet"):
        pq.write_table(pq.read_table(table).slice(0, 0), table)
    full = datasets_dir() / BASES["abort"]
    for a, b in ((bare, bare), (emptied, emptied), (bare, full), (full, emptied)):
        status, out, err = run_command(["compare", str(a), str(b), "-o", str(tmp_path / "c.html")])
        assert status == 0 and "== Event counts that changed" in out, err
        assert run_command(["compare", str(a), str(b), "--json"])[0] == 0
    for trace in (bare, emptied):
        status, out, _ = run_command(["doctor", str(trace)])
        assert status == 0 and "steps: 0 (0 complete)" in out
        assert run_command(["report", str(trace), "-o", str(tmp_path / "r.html")])[0] == 0
        assert run_command(["export", str(trace), "--perfetto", str(tmp_path / "t.pftrace")])[0] == 0


def test_doctor_reads_the_trace_of_an_isolated_session_that_crashed_mid_decode(engine_build, tiny_model, tmp_path,
                                                                               monkeypatch):
    from test_session import abort_in_decode

    from gpuscope.errors import EngineCrashedError
    from gpuscope.session import SplitConfig, open_session

    monkeypatch.setenv("GGML_NO_BACKTRACE", "1")  # ggml would otherwise attach gdb to print a backtrace
    session = open_session(tiny_model, SplitConfig(n_ctx=256, n_batch=32, n_ubatch=32, n_threads=1),
                      engine=engine_build, isolate=True)
    session.fill(40)
    session.decode([1])
    with pytest.raises(EngineCrashedError):
        session.run(abort_in_decode)
    path = save_trace(session.trace(), tmp_path / "crashed.trace")
    session.close()
    assert "seq" not in load_trace(path).tables["steps"].columns  # the session's steps are not ring events
    status, out, err = run_command(["doctor", str(path), "--json"])
    assert status == 0, err
    crashed = next(f for f in json.loads(out) if f["id"] == "engine.crashed")
    assert "SIGABRT" in crashed["statement"] and "during decode step" in crashed["statement"]
    assert run_command(["report", str(path), "-o", str(tmp_path / "r.html")])[0] == 0
    assert run_command(["export", str(path), "--perfetto", str(tmp_path / "t.pftrace")])[0] == 0


# -- arguments ------------------------------------------------------------------------------------------------------

def test_a_model_that_is_not_gguf_is_an_error_not_ignored(tmp_path):
    trace = str(datasets_dir() / BASES["abort"])
    not_gguf = tmp_path / "notgguf"
    not_gguf.write_bytes(b"not a model at all")
    for argv in (["doctor", trace, "--model", str(not_gguf)],
                 ["report", trace, "--model", str(tmp_path / "absent.gguf"), "-o", str(tmp_path / "r.html")]):
        assert "gpuscope: error: " in _error_of(argv)


def test_bad_output_paths_are_one_line_before_any_work(tmp_path):
    trace = str(datasets_dir() / BASES["abort"])
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for output, said in ((tmp_path, "is a folder: give a file to write"),
                         (a_file / "report.html", f"{a_file} is a file, not a folder"),
                         (a_file / "deeper" / "report.html", f"{a_file} is a file, not a folder"),
                         ("/proc/no-such-file", "/proc/no-such-file: No such file or directory")):
        for argv in (["report", trace, "-o", str(output)], ["compare", trace, trace, "-o", str(output)],
                     ["export", trace, "--perfetto", str(output)]):
            assert said in _error_of(argv), argv
    assert "is a file: give a folder to write" in _error_of(["report", trace, "-o", str(tmp_path / "r.html"),
                                                             "--png", str(a_file)])
