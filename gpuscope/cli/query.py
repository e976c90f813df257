"""`gpuscope query "SQL" TRACE...`: one SELECT over many traces' tables (gpuscope.query), printed as a table, CSV
or JSON lines as the result is computed (a result larger than memory can be written out)."""
from __future__ import annotations

import json
import shutil
import sys
import warnings

import pyarrow as pa

from gpuscope.query import DEFAULT_MEMORY_LIMIT
from gpuscope.query.traces import SkippedTraceWarning

TABLE_ROWS = 50  # what --format table shows without --rows: a screenful, with the count of the rest


def _run(args) -> int:
    # Imported here, not above: it loads DuckDB (~110 ms), which the parser of every other command would pay for.
    from gpuscope.query.database import TraceDatabase

    with warnings.catch_warnings(record=True) as skipped:
        warnings.simplefilter("always", SkippedTraceWarning)
        database = TraceDatabase(args.traces, memory_limit=args.memory_limit, temp_directory=args.temp_dir,
                                 skip_bad=args.skip_bad)
    for warning in skipped:
        print(f"gpuscope: warning: {warning.message}", file=sys.stderr)
    rows = args.rows if args.rows is not None else TABLE_ROWS if args.format == "table" else None
    with database:
        _PRINTERS[args.format](database.batches(args.sql), rows)
    return 0


def _limited(batches, rows: int | None):
    """The batches up to `rows` rows in all (all of them when None)."""
    left = rows
    for batch in batches:
        if left is not None and batch.num_rows >= left:
            yield batch.slice(0, left)
            return
        yield batch
        if left is not None:
            left -= batch.num_rows


def _print_table(batches, rows: int) -> None:
    shown, total = [], 0
    for batch in batches:
        schema = batch.schema
        if total < rows:
            shown.append(batch.slice(0, rows - total))
        total += batch.num_rows  # the rest is counted, not kept
    frame = pa.Table.from_batches(shown, schema).to_pandas()
    width = shutil.get_terminal_size().columns
    print(frame.to_string(index=False, max_colwidth=60, line_width=width) if len(frame) else
          "  ".join(schema.names))
    more = f"; {len(frame):,} shown, --rows N shows more" if total > len(frame) else ""
    print(f"({total:,} row{'s' if total != 1 else ''}{more})")


def _print_csv(batches, rows: int | None) -> None:
    for index, batch in enumerate(_limited(batches, rows)):
        frame = batch.to_pandas()
        for column, field in zip(frame.columns, batch.schema):
            if pa.types.is_nested(field.type):  # lists and structs (the traces' devices, configs) as JSON text
                frame[column] = [json.dumps(value) for value in batch.column(column).to_pylist()]
        frame.to_csv(sys.stdout, index=False, header=index == 0)


def _print_json(batches, rows: int | None) -> None:
    for batch in _limited(batches, rows):
        if batch.num_rows:
            print(batch.to_pandas().to_json(orient="records", lines=True, date_format="iso").rstrip("\n"))


_PRINTERS = {"table": _print_table, "csv": _print_csv, "json": _print_json}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "query", help="SQL over many traces: one view per event kind, the steps, and the traces' meta",
        description="Runs one SELECT (DuckDB's SQL) over the traces' Parquet tables, read lazily: a view per event "
                    "kind and per other table (steps, kernels, ...), each with a `trace` column, and `traces` with "
                    "one row per trace (build, configs, devices, the whole meta as JSON). Example: gpuscope query "
                    "\"SELECT trace, count(*) FROM fa_plan WHERE kernel = 'none' GROUP BY trace\" "
                    "datasets/*/*.trace. See docs/query.md.")
    parser.add_argument("sql", help="one SELECT statement (WITH, DESCRIBE, SHOW TABLES and EXPLAIN too)")
    parser.add_argument("traces", nargs="+", metavar="TRACE", help="trace folders (or glob patterns)")
    parser.add_argument("--format", choices=sorted(_PRINTERS), default="table",
                        help="table (default), csv, or json (one object per line)")
    parser.add_argument("--rows", type=int, metavar="N",
                        help=f"print at most N rows (default: {TABLE_ROWS} for table, all for csv and json)")
    parser.add_argument("--memory-limit", default=DEFAULT_MEMORY_LIMIT, metavar="SIZE",
                        help=f"DuckDB's memory limit, e.g. 512MB or 8GiB (default {DEFAULT_MEMORY_LIMIT}); what "
                             "does not fit is spilled to the temp directory")
    parser.add_argument("--temp-dir", metavar="DIR",
                        help="where DuckDB spills (default: a fresh folder in the system's temp folder, removed "
                             "afterwards)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out traces that cannot be read, with a warning each (default: refuse the set, "
                             "naming the bad trace)")
    parser.set_defaults(func=_run)
