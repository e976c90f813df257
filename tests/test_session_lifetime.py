"""How long a session's processes and files live: the worker's own entry point (a script on standard input can
make one), RPC servers that outlive the thread that made them, and no rings or folders left behind.

Each case runs in a program of its own: what goes wrong here kills a process (the old failures aborted it)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from gpuscope.session import Session, SplitConfig
from gpuscope.session.scratch import process_alive
from gpuscope.trace.ringtap import ring_dir

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

_PRELUDE = """
    import json, os, sys, threading, time
    from gpuscope.errors import GpuscopeError
    from gpuscope.session import Session, SplitConfig, open_session
    from gpuscope.session.scratch import process_alive
    from gpuscope.session.workloads import sweep_loop
    MODEL, ENGINE = {model!r}, {engine!r}
    def session(isolate, devices=None):
        return open_session(MODEL, SplitConfig(devices=devices, n_ctx=128, n_threads=1), engine=ENGINE, isolate=isolate)
"""


def _script(engine_build, tiny_model, body: str) -> str:
    return textwrap.dedent(_PRELUDE.format(model=str(tiny_model), engine=str(engine_build.root))) + \
        textwrap.dedent(body)


def _run_stdin(script: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """`python3 - < script`: the program has no file that multiprocessing's spawn could import again."""
    return subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=timeout)


def _last_json(output: str):
    return json.loads(output.strip().splitlines()[-1])


def test_an_isolated_session_works_from_a_script_on_standard_input(engine_build, tiny_model):
    done = _run_stdin(_script(engine_build, tiny_model, """
        def here(session):
            return session.position()
        with session(isolate=True) as s:
            s.fill(20)
            s.run(sweep_loop, [24], 3)  # a function of a module: the worker imports it
            try:
                s.run(here)
            except GpuscopeError as exc:
                refused = f"{type(exc).__name__}: {exc}"
            position = s.position()  # the worker still serves after the refusal
        trace = s.trace()
        print(json.dumps({"position": position, "steps": len(trace.tables["steps"]), "refused": refused,
                          "crashed": trace.meta["crashed"], "ring": trace.meta["ring"]["path"]}))
    """))
    assert done.returncode == 0, done.stderr[-3000:]
    result = _last_json(done.stdout)
    assert result["position"] == 27 and result["steps"] == 2 + 3  # fill (one batch) + sweep's fill to 24 + 3 steps
    assert result["crashed"] is False
    assert result["refused"].startswith("SessionError: session.run(here)") and "__main__" in result["refused"]
    assert not Path(result["ring"]).exists()


def test_a_worker_that_cannot_start_is_not_blamed_on_the_engine(engine_build, tiny_model):
    done = _run_stdin(_script(engine_build, tiny_model, """
        os.environ["PYTHONHOME"] = "/nonexistent"  # the worker's interpreter cannot start
        try:
            session(isolate=True)
        except GpuscopeError as exc:
            print(json.dumps(f"{type(exc).__name__}: {exc}"))
    """))
    assert done.returncode == 0, done.stderr[-3000:]
    message = _last_json(done.stdout)
    assert message.startswith("SessionError: the worker process") and "before it loaded the engine" in message
    assert "Fatal Python error" in done.stderr  # the worker's own words, where the message says they are


def test_sessions_made_in_a_thread_that_ends_keep_their_rpc_servers(engine_build, tiny_model):
    done = _run_stdin(_script(engine_build, tiny_model, """
        made = {}
        def make():
            made["in_process"] = session(False, ["rpc:0"])
            made["isolated"] = session(True, ["rpc:0"])
        maker = threading.Thread(target=make)
        maker.start()
        maker.join()
        time.sleep(0.5)  # the parent-death signal of a child forked by that thread fired when it ended
        result = {}
        for name, s in made.items():
            alive = [process_alive(p["pid"]) for p in s.processes().values() if p["pid"] != os.getpid()]
            position = s.fill(40)  # decoding over RPC from the main thread
            s.close()
            result[name] = {"alive": alive, "position": position,
                            "server_exit": s.trace().meta["processes"]["rpc0"]["exit"]}
        print(json.dumps(result))
    """))
    assert done.returncode == 0, done.stderr[-3000:]
    result = _last_json(done.stdout)
    assert [len(r["alive"]) for r in result.values()] == [1, 2]  # the server; the worker and its server
    for name, r in result.items():
        assert all(r["alive"]) and r["position"] == 40, name
        assert r["server_exit"]["stopped_by_session"] is True, name  # running until the session stopped it


def _leftovers(pids: set[int]) -> list[Path]:
    """The rings and RPC folders whose names carry one of `pids`."""
    found = []
    for folder in (ring_dir(), Path(tempfile.gettempdir())):
        found += [p for p in folder.glob("gpuscope-*") if any(f"-{pid}-" in p.name for pid in pids)]
    return sorted(found)


_TWO_SESSIONS = """
    sessions = {"in_process": session(False, ["rpc:0"]), "isolated": session(True, ["rpc:0"])}
    for s in sessions.values():
        s.fill(20)
    described = {name: s.processes() for name, s in sessions.items()}
    print(json.dumps({"pid": os.getpid(), "processes": described}), flush=True)
"""


def _pids_and_rings(described: dict) -> tuple[set[int], list[Path]]:
    pids = {described["pid"]}
    rings = []
    for processes in described["processes"].values():
        pids |= {p["pid"] for p in processes.values()}
        rings += [Path(p["ring"]) for p in processes.values()]
    return pids, rings


def test_closed_sessions_leave_no_rings_or_rpc_folders(engine_build, tiny_model):
    done = _run_stdin(_script(engine_build, tiny_model, _TWO_SESSIONS + """
    for s in sessions.values():
        s.close()
    isolated = described["isolated"]
    print(json.dumps([p["ring"] for p in isolated.values() if os.path.exists(p["ring"])]))
    """))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    described, isolated_rings_after_close = json.loads(lines[-2]), json.loads(lines[-1])
    assert isolated_rings_after_close == []  # gone at close; the in-process engine's ring goes at exit
    pids, rings = _pids_and_rings(described)
    assert len(rings) == 4 and not any(ring.exists() for ring in rings)
    assert _leftovers(pids) == []


def test_the_leftovers_of_a_killed_session_go_at_the_next_session_start(engine_build, tiny_model):
    script = _script(engine_build, tiny_model, _TWO_SESSIONS + "    time.sleep(600)\n")
    child = subprocess.Popen([sys.executable, "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        child.stdin.write(script)
        child.stdin.close()
        described = json.loads(child.stdout.readline())
    finally:
        child.send_signal(signal.SIGKILL)  # no atexit, no close
        child.wait()
    pids, rings = _pids_and_rings(described)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(process_alive(pid) for pid in pids):
        time.sleep(0.1)  # the worker and the servers die with it
    assert not any(process_alive(pid) for pid in pids)
    left = _leftovers(pids)
    assert set(rings) <= set(left)  # every ring, plus the RPC log folders
    assert sum(path.is_dir() for path in left) == 2
    with Session(tiny_model, SplitConfig(n_ctx=128, n_threads=1), engine=engine_build):
        assert _leftovers(pids) == []
