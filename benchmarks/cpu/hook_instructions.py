"""The hooks' CPU cost in instructions, which a noisy 2-vCPU machine cannot show in seconds.

Runs llama-bench (one thread, decode only) under valgrind's callgrind for the three arms of `gpuscope bench overhead`
(recording into a ring, hooks present with no ring, the unpatched twin) at two decode lengths, and prints the
instructions per decoded token of each arm (the difference of the two lengths, so loading and warm-up cancel) and
the cost against the twin. Instruction counts repeat exactly for the same binary and input, whatever else runs.

    python3 benchmarks/cpu/hook_instructions.py [--engine cpu] [--model GGUF] [--tokens 4 20]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gpuscope.engine.build import find_build
from gpuscope.errors import EngineNotFoundError
from gpuscope.models import default_model


def instructions(program: Path, model: Path, tokens: int, ring: Path | None) -> int:
    env = {**os.environ, "GPUSCOPE_RING": str(ring)} if ring else {k: v for k, v in os.environ.items()
                                                                    if k != "GPUSCOPE_RING"}
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out", str(program),
                               "-m", str(model), "-p", "0", "-n", str(tokens), "-r", "1", "-t", "1"],
                              env=env, capture_output=True, text=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or not found:
        sys.exit(f"{program.name} under callgrind failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="cpu", help="hooked build (its twin is ENGINE-nohooks)")
    parser.add_argument("--model", type=Path, help="GGUF (default: the default model)")
    parser.add_argument("--tokens", type=int, nargs=2, default=[4, 20], metavar=("SHORT", "LONG"))
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed: apt-get install valgrind")
    model = args.model or default_model()
    try:
        hooked, twin = find_build(args.engine), find_build(f"{args.engine}-nohooks")
    except EngineNotFoundError as exc:
        sys.exit(f"{exc}\n(the hooked build comes from `gpuscope engine build`, its unpatched twin from "
                 "`gpuscope engine build --no-hooks`)")
    with tempfile.TemporaryDirectory() as tmp:
        arms = {"recording": (hooked.program("llama-bench"), Path(tmp) / "bench.ring"),
                "hooks_off": (hooked.program("llama-bench"), None),
                "unpatched": (twin.program("llama-bench"), None)}
        jobs = [(arm, n) for arm in arms for n in args.tokens]

        def count(job: tuple[str, int]) -> int:
            program, ring = arms[job[0]]
            return instructions(program, model, job[1], ring)

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            counts = dict(zip(jobs, pool.map(count, jobs)))
    short, long = args.tokens
    per_token = {arm: (counts[(arm, long)] - counts[(arm, short)]) / (long - short) for arm in arms}
    base = per_token["unpatched"]
    print(f"instructions per decoded token ({model.name}, 1 thread, tg{long} - tg{short}):")
    for arm, count in per_token.items():
        print(f"  {arm:<10} {count:>16,.0f}  {count / base - 1:+.4%}")


if __name__ == "__main__":
    main()
