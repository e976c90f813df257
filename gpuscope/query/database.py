"""`TraceDatabase`: one DuckDB connection over many traces, a view per table kind (docs/query.md).

Each view reads its kind's Parquet file of every trace at query time (nothing is loaded before a query runs, and
DuckDB reads only the columns and row groups a query needs), with the files' columns matched by name: traces of
other versions, whose tables have more or fewer columns, fill the missing ones with null. A trace without a kind's
table adds no rows to its view; a kind no trace has is an empty view with the format's columns. DuckDB keeps within
its memory limit by spilling to a temp directory outside the traces, and nothing here writes anywhere else.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from gpuscope.errors import QueryError, TraceError
from gpuscope.query import DEFAULT_MEMORY_LIMIT
from gpuscope.query.traces import TraceArgument, open_traces, trace_paths, trace_rows
from gpuscope.ring.schema import load_schema
from gpuscope.trace.format import INTEGER, NUMBER, OTHER_TABLES, read_table, required_columns

_SQL_TYPES = {INTEGER: "BIGINT", NUMBER: "DOUBLE"}  # text of either kind is VARCHAR
_QUERIES = (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN)  # SELECT covers WITH, DESCRIBE, SHOW, FROM x


class TraceDatabase:
    """SQL over the tables of many traces. `sql(text)` gives a DuckDB relation, `df(text)` a DataFrame,
    `batches(text)` the result as Arrow record batches, in constant memory. Views: one per event kind and per
    table beside them (`steps`, `kernels`, ...), each with a `trace` column first; `traces`: one row per trace.

    traces: a trace folder, a glob pattern or a list of either. memory_limit: DuckDB's (`"512MB"`, `"4GiB"`);
    temp_directory: where DuckDB spills what does not fit (default: a fresh folder in the system's temp folder, made
    when the first spill needs it and removed on close); skip_bad: leave out traces that cannot be read, with a
    SkippedTraceWarning, instead of refusing the whole set with a TraceError."""

    def __init__(self, traces: TraceArgument, *, memory_limit: str = DEFAULT_MEMORY_LIMIT,
                 temp_directory: str | os.PathLike | None = None, skip_bad: bool = False):
        self.traces = open_traces(trace_paths(traces), skip_bad=skip_bad)
        self.memory_limit = memory_limit
        self.temp_directory = Path(temp_directory) if temp_directory is not None else \
            Path(tempfile.gettempdir()) / f"gpuscope-query-{os.getpid()}-{secrets.token_hex(4)}"
        config = {"memory_limit": memory_limit, "temp_directory": str(self.temp_directory),
                  "autoinstall_known_extensions": False,  # a query never downloads anything
                  "parquet_metadata_cache": True}  # every query binds every view: read each footer once
        try:
            self.connection = duckdb.connect(config=config)
        except duckdb.Error as exc:
            raise QueryError(f"memory limit {memory_limit!r}: {_one_line(exc)}") from None
        self.connection.execute("SET enable_progress_bar = false")  # it would draw over the CLI's output
        self.tables = self._create_views()

    def _create_views(self) -> list[str]:
        connection = self.connection
        files = pa.table({"file": [str(file) for trace in self.traces for file in trace.tables.values()],
                          "trace": [trace.name for trace in self.traces for _ in trace.tables]})
        connection.execute("CREATE SCHEMA gpuscope")
        connection.from_arrow(files).create("gpuscope.files")
        connection.from_arrow(trace_rows(self.traces)).create("gpuscope.trace_rows")
        connection.execute("CREATE VIEW traces AS SELECT * REPLACE (CAST(meta AS JSON) AS meta) "
                           "FROM gpuscope.trace_rows")
        kinds = set(load_schema().kinds.values()) | set(OTHER_TABLES)
        kinds |= {kind for trace in self.traces for kind in trace.tables}
        kinds.discard("traces")  # the name of the meta table: a newer writer's table of that name cannot shadow it
        for kind in sorted(kinds):
            files_of_kind = [str(trace.tables[kind]) for trace in self.traces if kind in trace.tables]
            body = _scan(files_of_kind) if files_of_kind else _empty(kind)
            connection.execute(f"CREATE VIEW {_name(kind)} AS {body}")
        return ["traces", *sorted(kinds)]

    def sql(self, sql: str) -> duckdb.DuckDBPyRelation:
        """The relation of one SELECT (WITH, DESCRIBE, SHOW and EXPLAIN too); it runs when it is fetched."""
        with self._errors(sql):
            statements = self.connection.extract_statements(sql)
            if len(statements) != 1 or statements[0].type not in _QUERIES:
                found = ", ".join(statement.type.name for statement in statements) or "nothing"
                raise QueryError(f"a query over traces is one SELECT statement (found {found}): it reads the "
                                 "traces and writes nothing")
            return self.connection.sql(sql)

    def df(self, sql: str) -> pd.DataFrame:
        with self._errors(sql):
            return self.sql(sql).df()

    def batches(self, sql: str, rows_per_batch: int = 10_000) -> Iterator[pa.RecordBatch]:
        """The result as it is computed, batch by batch: a result larger than memory can be written out."""
        with self._errors(sql):
            reader = self.sql(sql).to_arrow_reader(rows_per_batch)
            empty = True
            for batch in reader:
                empty = False
                yield batch
            if empty:  # the columns of an empty result
                yield pa.RecordBatch.from_pylist([], schema=reader.schema)

    @contextlib.contextmanager
    def _errors(self, sql: str):
        """DuckDB's errors as one line: a missing table lists the tables, a damaged table file is named."""
        try:
            yield
        except duckdb.OutOfMemoryException as exc:
            raise QueryError(f"the query needs more memory than its limit ({self.memory_limit}) even spilling to "
                             f"{self.temp_directory}: raise --memory-limit (memory_limit=) "
                             f"({_one_line(exc).partition(' Possible solutions')[0]})") from None
        except duckdb.CatalogException as exc:
            raise QueryError(f"{_one_line(exc)} (tables: {', '.join(self.tables)})") from None
        except duckdb.InterruptException:
            raise KeyboardInterrupt from None
        except duckdb.Error as exc:
            named = next((file for trace in self.traces for file in trace.tables.values() if str(file) in str(exc)),
                         None)
            if named is not None:
                raise TraceError(f"{named}: damaged Parquet data ({_one_line(exc)})") from None
            if isinstance(exc, (duckdb.ProgrammingError, duckdb.DataError)):  # the query's own: syntax, names, types
                raise QueryError(_one_line(exc)) from None
            raise self._damage(sql) or QueryError(_one_line(exc)) from None

    def _damage(self, sql: str) -> TraceError | None:
        """After DuckDB failed to read data (its message need not name the file): the first file of a kind the query
        names that does not decode. Opening the traces checked only their footers; this reads whole files."""
        named = {kind for kind in self.tables if re.search(rf"\b{re.escape(kind)}\b", sql)}
        for trace in self.traces:
            for kind, file in trace.tables.items():
                if kind in named:
                    try:
                        read_table(file, kind)
                    except TraceError as exc:
                        return exc
        return None

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> TraceDatabase:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TraceDatabase({len(self.traces)} traces, memory limit {self.memory_limit})"


def _scan(files: list[str]) -> str:
    """A kind's view: its files read together, columns matched by name, each row with its trace's name."""
    listed = ", ".join(_literal(file) for file in files)
    return (f"SELECT files.trace, scan.* FROM read_parquet([{listed}], union_by_name = true) AS scan "
            "JOIN gpuscope.files AS files ON files.file = scan.filename")


def _empty(kind: str) -> str:
    """A kind no trace has: no rows, the columns the format gives it."""
    columns = ", ".join(f"CAST(NULL AS {_SQL_TYPES.get(kind_type, 'VARCHAR')}) AS {_name(column)}"
                        for column, kind_type in (required_columns(kind) or {}).items())
    return f"SELECT CAST(NULL AS VARCHAR) AS trace, {columns} WHERE false"


def _name(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _one_line(exc: BaseException) -> str:
    """DuckDB's message without the echo of the query and its caret (`LINE 1: ...` and `^`)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    return " ".join(line for line in lines if line.strip("^") and not line.startswith("LINE "))
