"""The ring reader's drain throughput against the reader of another commit, interleaved in one run.

Fills one ring with the native bench tool, then opens and drains it alternately with this checkout's `RingReader`
and with `gpuscope/ring/reader.py` as it was at `--against` (loaded from git under another module name), and prints
the median and best records/s of each and the largest timestamp difference between their results. Both read the
same file on the same machine in the same minutes, so their ratio holds where the absolute figures are noisy.

    python3 benchmarks/cpu/drain_side_by_side.py --against COMMIT [--records 4000000] [--rounds 7]
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from at_commit import source_at
from gpuscope.bench.ring import _shm_or_tmp, ring_tool
from gpuscope.ring.reader import RingReader


def reader_at(commit: str):
    """RingReader as `gpuscope/ring/reader.py` was at `commit`."""
    folder = Path(tempfile.mkdtemp(prefix="gpuscope-reader-"))
    (folder / "reader.py").write_text(source_at(commit, "gpuscope/ring/reader.py"))
    spec = importlib.util.spec_from_file_location("gpuscope.ring.reader_at_" + commit[:12], folder / "reader.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module.RingReader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="the commit whose reader to compare with")
    parser.add_argument("--records", type=int, default=4_000_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    readers = {"this checkout": RingReader, args.against: reader_at(args.against)}
    seconds: dict[str, list[float]] = {name: [] for name in readers}
    with tempfile.TemporaryDirectory(prefix="gpuscope-bench-", dir=_shm_or_tmp()) as folder:
        path = Path(folder, "drain.ring")
        subprocess.run([str(ring_tool("gpuscope-ring-bench")), "--fill", str(path), "--records", str(args.records)],
                       check=True, capture_output=True)
        drained = {}
        for _ in range(args.rounds):
            for name, reader in readers.items():
                start = time.perf_counter()
                with reader(path) as ring:
                    drained[name] = ring.drain()
                seconds[name].append(time.perf_counter() - start)
                if drained[name].size != args.records:
                    sys.exit(f"{name}: drained {drained[name].size} of {args.records} records")
    mine, theirs = (drained[name]["ts_ns"].astype(np.int64) for name in readers)
    print(f"{args.records:,} records, {args.rounds} interleaved rounds; largest timestamp difference "
          f"{int(np.abs(mine - theirs).max())} ns")
    for name, times in seconds.items():
        print(f"  {name:<16} median {args.records / statistics.median(times) / 1e6:5.1f} M records/s, "
              f"best {args.records / min(times) / 1e6:5.1f}")
    ratio = statistics.median(seconds[args.against]) / statistics.median(seconds["this checkout"])
    print(f"  this checkout drains {ratio:.2f}x as fast (medians)")


if __name__ == "__main__":
    main()
