"""SQL over many traces: `gpuscope.query(sql, traces)` -> a DataFrame, and `gpuscope.query.database.TraceDatabase`
for several queries over one set of traces (docs/query.md).

This package is callable, `gpuscope.query(...)` being the way in; DuckDB is loaded on the first query, not by
`import gpuscope`."""
from __future__ import annotations

from gpuscope.extras import callable_package

# DuckDB spills what does not fit to its temp directory, so a modest limit serves aggregates over any number of
# traces (tests/test_query.py runs 64 MB over more than 300 MB of tables) and leaves memory to the engine under study.
DEFAULT_MEMORY_LIMIT = "2GiB"


def query(sql: str, traces, *, relation: bool = False, memory_limit: str = DEFAULT_MEMORY_LIMIT,
          temp_directory=None, skip_bad: bool = False):
    """Run one SELECT over the traces' tables: a pandas DataFrame, or with relation=True a DuckDB relation (it keeps
    its database open until it is dropped).

    traces: a trace folder, a glob pattern (`"datasets/*/*.trace"`) or a list of either. memory_limit: DuckDB's
    (`"512MB"`, `"4GiB"`); temp_directory: where it spills (default: a fresh folder in the system's temp folder,
    removed when the query is done); skip_bad: leave out traces that cannot be read, with a warning, instead of
    refusing the whole set."""
    # Imported here, not above: `import gpuscope` makes this package callable, and DuckDB (~110 ms to import) is
    # needed only once a query runs.
    from gpuscope.query.database import TraceDatabase

    database = TraceDatabase(traces, memory_limit=memory_limit, temp_directory=temp_directory, skip_bad=skip_bad)
    if relation:
        return database.sql(sql)
    with database:
        return database.df(sql)


callable_package(__name__, query)
__all__ = ["DEFAULT_MEMORY_LIMIT", "query"]
