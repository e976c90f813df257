"""`gpuscope bench query`: SQL query time and peak memory against the number of traces queried.

The traces are copies of one real recorded trace under distinct names (by default the two-H200 tensor-split
kernels trace: 57,410 GPU kernels, the largest table of the datasets), their tables as recorded, so N copies hold N
times its rows. Each count is measured in a fresh process, so that its peak RSS is its own.
"""
from __future__ import annotations

import multiprocessing
import resource
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from gpuscope.errors import QueryError
from gpuscope.paths import datasets_dir
from gpuscope.query import DEFAULT_MEMORY_LIMIT


def default_source() -> Path:
    return datasets_dir() / "h200x2-splits" / "x2-kernels-tensor.trace"


# A streaming aggregate, one that joins the meta table, and one whose state grows with the rows (a distinct over
# long kernel names): the last is the one that must spill once the traces outgrow the memory limit.
QUERIES = {
    "kernels by family": "SELECT trace, family, count(*) AS kernels, sum(duration_ns) AS ns FROM kernels GROUP BY ALL",
    "step medians": "SELECT build, config, depth, median(wall_ns) AS median_ns FROM steps JOIN traces USING (trace) "
                    "WHERE phase = 'decode' GROUP BY ALL",
    "distinct launches": "SELECT count(*) AS launches FROM (SELECT DISTINCT trace, name, ts_ns FROM kernels)",
}


def copy_traces(source: Path, count: int, folder: Path) -> list[Path]:
    """`count` copies of the trace `source` in `folder`, named `copy-0000.trace`, ...: its meta and tables as they
    were recorded."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for index in range(count):
        copy = folder / f"copy-{index:04d}.trace"
        shutil.copytree(source, copy)
        copies.append(copy)
    return copies


def decoded_bytes(trace: Path) -> int:
    """What the trace's tables take decoded into Arrow memory: what a reader that loads them would hold."""
    return sum(pq.read_table(file).nbytes for file in (trace / "tables").glob("*.parquet"))


def _measure(folder: str, memory_limit: str, queue) -> None:
    # Imported here, in the measuring process: `gpuscope bench` of any kind imports this module, and DuckDB is
    # needed only here.
    from gpuscope.query.database import TraceDatabase

    timings, failed = {}, {}
    start = time.perf_counter()
    with TraceDatabase(f"{folder}/*.trace", memory_limit=memory_limit) as database:
        timings["open"] = time.perf_counter() - start
        for name, sql in QUERIES.items():
            start = time.perf_counter()
            try:
                database.df(sql)
                timings[name] = time.perf_counter() - start
            except QueryError as exc:  # one that does not fit its memory limit even spilling: a result too
                timings[name], failed[name] = None, str(exc)
    queue.put({"seconds": timings, "failed": failed,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def measure(folder: Path, memory_limit: str) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure, args=(str(folder), memory_limit, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def run(counts: list[int], source: Path | None = None, memory_limit: str = DEFAULT_MEMORY_LIMIT) -> list[dict]:
    source = source or default_source()
    per_copy = decoded_bytes(source)
    print(f"source: {source} ({per_copy / 1e6:.1f} MB of tables decoded), memory limit {memory_limit}")
    print(f"{'traces':>6} {'decoded':>9} {'open':>7} " + " ".join(f"{name:>18}" for name in QUERIES)
          + f" {'peak RSS':>9}")
    results = []
    scratch = Path(tempfile.mkdtemp(prefix="gpuscope-bench-query-"))
    try:
        for count in counts:
            folder = scratch / f"{count}"
            copy_traces(source, count, folder)
            figures = measure(folder, memory_limit)
            shutil.rmtree(folder)
            figures.update(traces=count, decoded_mb=count * per_copy / 1e6, memory_limit=memory_limit)
            results.append(figures)
            seconds = figures["seconds"]
            print(f"{count:>6} {figures['decoded_mb']:>7.0f}MB {seconds['open']:>6.2f}s "
                  + " ".join(f"{'fails':>18}" if seconds[name] is None else f"{seconds[name]:>17.2f}s"
                             for name in QUERIES)
                  + f" {figures['peak_rss_mb']:>7.0f}MB")
            for name, error in figures["failed"].items():
                print(f"       {name}: {error}")
        return results
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
