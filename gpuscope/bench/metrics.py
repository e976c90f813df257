"""`gpuscope bench metrics`: what following a ring with the exporter costs, against the engine's own step time.

One llama-server (the hooked build, a model) writes its ring while a bounded client loop sends it the same requests
in rounds, alternately with an exporter following the ring (a thread of this process, polling every `interval_s`
as `gpuscope metrics` does) and without (the first of each pair alternates, so drift hits both alike). The engine's
steps are read from the ring afterwards and split by round; the exporter's cost is its thread's CPU time, per poll
and per engine step it converted, and a scrape's time and size.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from gpuscope.analysis.steps import is_decode, step_table
from gpuscope.errors import GpuscopeError
from gpuscope.metrics.exporter import DEFAULT_INTERVAL_S, Exporter
from gpuscope.ring.reader import RingReader
from gpuscope.session.rpc import free_port
from gpuscope.trace.model import Trace

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


class LlamaServer:
    """A llama-server of a hooked build writing its ring at `ring`, on a free loopback port; a context manager."""

    def __init__(self, program: str | os.PathLike, model: str | os.PathLike, ring: str | os.PathLike, *,
                 args: tuple[str, ...] = ("-c", "1024", "-t", "2", "-np", "1"), ready_s: float = 180.0):
        self.port = free_port()
        self.ring = Path(ring)
        self.process = subprocess.Popen([str(program), "-m", str(model), "--port", str(self.port), *args],
                                        env={**os.environ, "GPUSCOPE_RING": str(ring)}, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + ready_s
        while not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise GpuscopeError(f"llama-server did not come up on port {self.port} within {ready_s:g} s")
            time.sleep(0.25)

    def _healthy(self) -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1).status == 200
        except OSError:
            return False

    def complete(self, prompt: str, n_predict: int) -> str:
        """One completion (the prompt evaluated afresh each time: no prompt cache)."""
        body = json.dumps({"prompt": prompt, "n_predict": n_predict, "cache_prompt": False}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/completion", body,
                                         {"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(request, timeout=300).read())["content"]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "LlamaServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Following:
    """An exporter polling a ring in a thread, its CPU time counted poll by poll."""

    def __init__(self, ring: Path, interval_s: float):
        self.exporter = Exporter([str(ring)])
        self.exporter.poll()  # what the ring holds already: a fresh exporter's catch-up, not counted
        self.cpu_s, self.polls = 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), daemon=True)
        self._thread.start()

    def _run(self, interval_s: float) -> None:
        while not self._stop.is_set():
            began = time.thread_time()
            self.exporter.poll()
            self.cpu_s += time.thread_time() - began
            self.polls += 1
            self._stop.wait(interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        began = time.thread_time()
        self.exporter.poll()  # the last interval's events, as the exporter would read them
        self.cpu_s += time.thread_time() - began
        self.polls += 1


def measure(program: str | os.PathLike, model: str | os.PathLike, *, rounds: int = 3, requests: int = 3,
            n_predict: int = 32, interval_s: float = DEFAULT_INTERVAL_S) -> dict:
    """Median decode and prefill step time without and with the exporter, and the exporter's own cost."""
    with tempfile.TemporaryDirectory(prefix="gpuscope-bench-metrics-") as folder:
        ring = Path(folder) / "server.ring"
        windows: list[tuple[str, int, int]] = []
        cost = {"cpu_s": 0.0, "polls": 0, "scrape_s": [], "scrape_bytes": 0, "series": 0}
        with LlamaServer(program, model, ring) as server:
            server.complete(PROMPT, 8)  # warm-up: the first requests pay one-time costs
            for round_index in range(rounds):
                for arm in (("without", "with") if round_index % 2 == 0 else ("with", "without")):
                    following = _Following(ring, interval_s) if arm == "with" else None
                    began = time.monotonic_ns()
                    for _ in range(requests):
                        server.complete(PROMPT, n_predict)
                    windows.append((arm, began, time.monotonic_ns()))
                    if following is not None:
                        following.stop()
                        cost["cpu_s"] += following.cpu_s
                        cost["polls"] += following.polls
                        scrape_began = time.perf_counter()
                        text = following.exporter.scrape()
                        cost["scrape_s"].append(time.perf_counter() - scrape_began)
                        cost["scrape_bytes"] = len(text)
                        cost["series"] = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
                        following.exporter.close()
            with RingReader(ring) as reader:
                tables = reader.read_all()
    events = Trace(meta={}, tables=tables)
    steps = step_table(*(events.table(kind) for kind in ("decode_begin", "ubatch", "decode_submitted",
                                                          "decode_synced")))
    steps = steps[steps["complete"] & steps["wall_ns"].notna()]
    arms = np.full(len(steps), None, object)
    for arm, began, ended in windows:
        arms[((steps["t_begin_ns"] >= began) & (steps["t_begin_ns"] <= ended)).to_numpy(bool)] = arm
    steps = steps.assign(arm=arms, phase=np.where(is_decode(steps), "decode", "prefill"))
    result = {"model": Path(model).name, "rounds": rounds, "requests_per_round": requests, "n_predict": n_predict,
              "interval_s": interval_s, "arms": {}}
    for arm in ("without", "with"):
        mine = steps[steps["arm"] == arm]
        result["arms"][arm] = {phase: {"steps": int((mine["phase"] == phase).sum()),
                                       "median_ms": float(mine.loc[mine["phase"] == phase, "wall_ns"].median() / 1e6)
                                       if (mine["phase"] == phase).any() else None}
                               for phase in ("decode", "prefill")}
    followed = int((steps["arm"] == "with").sum())
    followed_s = sum(ended - began for arm, began, ended in windows if arm == "with") / 1e9
    result["exporter"] = {
        "cpu_s": cost["cpu_s"], "polls": cost["polls"], "steps_followed": followed, "followed_s": followed_s,
        "share_of_a_core": cost["cpu_s"] / followed_s if followed_s else None,
        "cpu_ms_per_poll": cost["cpu_s"] * 1e3 / max(cost["polls"], 1),
        "cpu_us_per_step": cost["cpu_s"] * 1e6 / max(followed, 1),
        "scrape_ms": float(np.median(cost["scrape_s"]) * 1e3) if cost["scrape_s"] else None,
        "scrape_bytes": cost["scrape_bytes"], "series": cost["series"],
    }
    decode_with = result["arms"]["with"]["decode"]["median_ms"]
    result["exporter"]["share_of_decode_step"] = (result["exporter"]["cpu_us_per_step"] / 1e3 / decode_with
                                                  if decode_with else None)
    return result
