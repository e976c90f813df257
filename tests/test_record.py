"""`gpuscope record` as a flight recorder: real recorder processes, real signals (from a terminal, from timeout(1),
SIGKILL), real programs (a Python program emitting through the ring writer, llama-server, a llama-cpp-python script
on the hooked build), and the traces they leave."""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import termios
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from gpuscope import cli
from gpuscope.doctor.rules import diagnose
from gpuscope.analysis import Analysis
from gpuscope.ring import native
from gpuscope.ring.reader import CLOCK_BOUND_NS, RingReader
from gpuscope.ring.schema import load_schema
from gpuscope.session.rpc import free_port
from gpuscope.trace.model import load_trace
from gpuscope.trace.recover import process_alive
from ring_programs import wait_for

EMITTER = Path(__file__).with_name("record_emitter.py")
GPUSCOPE = [sys.executable, "-m", "gpuscope.cli"]


@pytest.fixture(autouse=True)
def no_recorder_left(monkeypatch):
    """Every process a test starts through subprocess.Popen is killed when the test ends (a failed test would
    leave an endless program behind); the programs the recorders run die with them."""
    started: list[subprocess.Popen] = []
    popen_init = subprocess.Popen.__init__

    def tracked(self, *args, **kwargs):
        popen_init(self, *args, **kwargs)
        started.append(self)

    monkeypatch.setattr(subprocess.Popen, "__init__", tracked)
    yield
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def emitter_command(tmp_path: Path, *options: str) -> list[str]:
    return [sys.executable, str(EMITTER), str(native.ring_library()), str(tmp_path / "ready"), *options]


def start_recorder(tmp_path: Path, *emitter_options: str, record_options: tuple[str, ...] = (), wrapper=(),
                   **popen) -> tuple[subprocess.Popen, Path]:
    """A recorder of the emitter, in a session of its own (no terminal), once the emitter emits."""
    out = tmp_path / "run.trace"
    command = [*wrapper, *GPUSCOPE, "record", "-o", str(out), *record_options, "--",
               *emitter_command(tmp_path, *emitter_options)]
    options = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "start_new_session": True}
    recorder = subprocess.Popen(command, **{**options, **popen})
    wait_for((tmp_path / "ready").exists, what="the program's first event")
    return recorder, out


def marks(trace, name: str):
    frame = trace.table("mark")
    return frame[frame["name"] == name]


def program_pid(trace) -> int:
    return int(marks(trace, "start")["value"].iloc[0])


def assert_stopped_once(trace, signum: int, forwarded: bool) -> None:
    assert trace.meta["interrupted"] == {"signal": signum, "signal_name": signal.Signals(signum).name,
                                         "forwarded": forwarded, "killed": False}
    assert trace.meta["recording"]["state"] == "complete"
    assert trace.meta["exit"]["how"] == "exited with status 0"
    assert len(marks(trace, "tick")) > 0
    # the program's own count: exactly one stop signal reached it
    assert marks(trace, "stop")[["value", "value2"]].values.tolist() == [[signum, 1]]
    assert not process_alive(program_pid(trace))


def assert_ring_removed(trace) -> None:
    ring = Path(trace.meta["ring"]["path"])
    assert not ring.exists() and not ring.with_suffix(".claim").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_reaches_the_program_once_and_the_trace_is_marked_interrupted(tmp_path, signum):
    recorder, out = start_recorder(tmp_path)
    recorder.send_signal(signum)
    _, err = recorder.communicate(timeout=30)
    assert recorder.returncode == 0, err
    trace = load_trace(out)
    assert_stopped_once(trace, signum, forwarded=True)
    assert_ring_removed(trace)


def test_timeout_signals_the_whole_group_and_the_program_still_gets_it_once(tmp_path):
    # timeout(1) expiring sends SIGTERM to the recorder and then to its whole process group. It expires on SIGALRM:
    # sent here once the program runs, rather than after a fixed time the start-up of a loaded machine may exceed.
    timeout, out = start_recorder(tmp_path, wrapper=("timeout", "300"))
    timeout.send_signal(signal.SIGALRM)
    _, err = timeout.communicate(timeout=60)
    assert timeout.returncode == 124, err
    assert_stopped_once(load_trace(out), signal.SIGTERM, forwarded=True)


def in_a_terminal(command: list[str], read_output: bool = True) -> tuple[subprocess.Popen, int, list[bytes]]:
    """`command` as the session leader of a new pseudo-terminal, in its foreground; (process, master fd, output).
    A reader blocked on the master would keep the terminal open: `read_output=False` to hang it up by closing."""
    master, slave = os.openpty()
    process = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                               preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(slave)
    output: list[bytes] = []

    def read() -> None:
        try:
            while chunk := os.read(master, 4096):
                output.append(chunk)
        except OSError:  # EIO: the terminal's last user is gone
            pass

    if read_output:
        threading.Thread(target=read, daemon=True).start()
    return process, master, output


def test_ctrl_c_in_a_terminal_is_not_forwarded_a_second_time(tmp_path):
    out = tmp_path / "run.trace"
    recorder, master, output = in_a_terminal([*GPUSCOPE, "record", "-o", str(out), "--", *emitter_command(tmp_path)])
    wait_for((tmp_path / "ready").exists, what="the program's first event")
    os.write(master, b"\x03")  # Ctrl-C: the terminal sends SIGINT to its foreground group, program included
    assert recorder.wait(30) == 0, b"".join(output).decode(errors="replace")
    os.close(master)
    assert_stopped_once(load_trace(out), signal.SIGINT, forwarded=False)


def test_a_hangup_of_the_terminal_it_leads_is_forwarded(tmp_path):
    # the session leader alone gets the terminal's hangup: the recorder passes it on, and survives writing to the
    # hung-up terminal
    out = tmp_path / "run.trace"
    recorder, master, _ = in_a_terminal([*GPUSCOPE, "record", "-o", str(out), "--", *emitter_command(tmp_path)],
                                        read_output=False)
    wait_for((tmp_path / "ready").exists, what="the program's first event")
    os.close(master)
    assert recorder.wait(30) == 0
    assert_stopped_once(load_trace(out), signal.SIGHUP, forwarded=True)


def test_a_second_signal_kills_the_program_after_saving(tmp_path):
    recorder, out = start_recorder(tmp_path, "--ignore-stops")
    recorder.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert recorder.poll() is None  # the program ignores it: the recorder waits
    recorder.send_signal(signal.SIGINT)
    _, err = recorder.communicate(timeout=30)
    assert recorder.returncode == 1, err
    trace = load_trace(out)
    assert trace.meta["interrupted"] == {"signal": signal.SIGTERM, "signal_name": "SIGTERM", "forwarded": True,
                                         "killed": True, "second_signal": signal.SIGINT,
                                         "second_signal_name": "SIGINT"}
    assert trace.meta["exit"]["how"] == "killed by SIGKILL"
    # the doctor reads it as interrupted, not as a crash
    health = Analysis(trace).health
    assert health["interrupted"] == "SIGTERM" and not health["crashed"]
    assert "engine.crashed" not in {f.id for f in diagnose(Analysis(trace))}
    ticks = marks(trace, "tick")["value"]
    assert len(ticks) > 40 and ticks.tolist() == list(range(len(ticks)))
    assert not process_alive(program_pid(trace))
    assert_ring_removed(trace)


def test_sigkill_of_the_recorder_leaves_a_readable_trace_the_program_dies_and_the_next_record_finishes_it(tmp_path,
                                                                                                           capsys):
    recorder, out = start_recorder(tmp_path)
    # the trace is rewritten every few seconds: wait for a version that holds ticks
    wait_for(lambda: out.is_dir() and len(marks(load_trace(out), "tick")), what="the first rewrite with events")
    recorder.kill()
    recorder.wait(10)

    partial = load_trace(out)
    assert partial.meta["recording"]["state"] == "in progress" and partial.meta["exit"] is None
    flushed = marks(partial, "tick")["value"].tolist()
    assert flushed == list(range(len(flushed)))
    pid = program_pid(partial)
    wait_for(lambda: not process_alive(pid), 10, "the program's death with its recorder")  # PR_SET_PDEATHSIG
    ring = Path(partial.meta["ring"]["path"])
    with RingReader(ring) as reader:
        assert reader.status.state == "exited" and reader.status.written > len(flushed) + 1

    # the next recording (of a program with no hooks at all) finishes the killed one's trace from its ring
    assert cli.main(["record", "-o", str(tmp_path / "other.trace"), "--", sys.executable, "-c", "pass"]) == 0
    assert f"finished {out}, the trace of a killed recorder" in capsys.readouterr().err
    finished = load_trace(out)
    assert finished.meta["recording"]["state"] == "recovered"
    ticks = marks(finished, "tick")["value"].tolist()
    assert len(ticks) > len(flushed) and ticks == list(range(len(ticks)))
    assert finished.meta["ring"]["read"] == len(finished.tables["mark"]) and finished.meta["ring"]["lost"] == 0
    assert not ring.exists() and not ring.with_suffix(".claim").exists()


def test_from_ring_makes_the_trace_of_a_kept_ring(tmp_path, capsys):
    recorder, out = start_recorder(tmp_path, "--ticks", "30", record_options=("--keep-ring",))
    assert recorder.wait(30) == 0
    kept = load_trace(out)
    ring = Path(kept.meta["ring"]["path"])
    assert ring.is_file()

    again = tmp_path / "again.trace"
    assert cli.main(["record", "--from-ring", str(ring), "--out", str(again)]) == 0
    recovered = load_trace(again)
    assert recovered.meta["recording"]["state"] == "recovered"
    columns = ["seq", "name", "value", "value2"]
    assert recovered.tables["mark"][columns].astype(str).equals(kept.tables["mark"][columns].astype(str))
    # TSC stamps are converted with the calibration pairs a reader has seen: the recovery's reader saw them all
    drift = (recovered.tables["mark"]["ts_ns"] - kept.tables["mark"]["ts_ns"]).abs()
    assert drift.max() <= CLOCK_BOUND_NS
    assert not ring.exists()  # its writer is gone: recovered, then removed

    damaged = tmp_path / "not.ring"
    damaged.write_bytes(b"not a ring " * 1000)
    capsys.readouterr()
    assert cli.main(["record", "--from-ring", str(damaged), "--out", str(tmp_path / "x.trace")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(damaged) in err and damaged.exists(), err


def test_a_ring_that_cannot_be_read_stops_the_reading_not_the_program(tmp_path, capsys):
    valid = tmp_path / "valid.ring"
    subprocess.run(emitter_command(tmp_path, "--ticks", "3"), check=True, timeout=60,
                   env={**os.environ, "GPUSCOPE_RING": str(valid)})
    damaged = tmp_path / "damaged.ring"
    data = bytearray(valid.read_bytes())
    offset = load_schema().structs["gpuscope_ring_header"].dtype().fields["capacity"][1]
    data[offset:offset + 8] = (3).to_bytes(8, "little")  # not a power of two
    damaged.write_bytes(data)
    out = tmp_path / "run.trace"
    # the program puts the damaged ring whole where the recorder looks for its ring, then runs on
    program = (f"import os, shutil, time; ring = os.environ['GPUSCOPE_RING']; shutil.copy({str(damaged)!r}, "
               "ring + '.tmp'); os.rename(ring + '.tmp', ring); time.sleep(1)")
    assert cli.main(["record", "-o", str(out), "--", sys.executable, "-c", program]) == 0
    trace = load_trace(out)
    assert "capacity 3" in trace.meta["ring"]["error"] and trace.meta["exit"]["how"] == "exited with status 0"
    assert "warnings" not in trace.meta and "the ring could not be read" in capsys.readouterr().err
    assert_ring_removed(trace)


def test_a_virtualenv_style_interpreter_runs_as_the_symlink_and_silence_gives_advice(tmp_path, capfd):
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.symlink_to(sys.executable)
    out = tmp_path / "run.trace"
    assert cli.main(["record", "-o", str(out), "--", str(python), "-c", "import sys; print(sys.executable)"]) == 0
    done = capfd.readouterr()
    assert done.out.splitlines()[0] == str(python)
    assert "emitted no gpuscope event" in done.err and "--engine NAME" in done.err
    trace = load_trace(out)
    assert trace.meta["program"] == str(python) and trace.meta["ring"]["opened"] is False
    assert "LLAMA_CPP_LIB_PATH" in trace.meta["warnings"][0]


def test_engine_option_records_a_llama_cpp_python_script(tmp_path, engine_build, tiny_model):
    script = tmp_path / "decode.py"
    script.write_text("import sys\nimport llama_cpp\n"
                      "llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, n_batch=16, verbose=False)\n"
                      "llm.eval([1, 2, 3])\nllm.eval([4])\n")
    out = tmp_path / "py.trace"
    done = subprocess.run([*GPUSCOPE, "record", "--engine", engine_build.meta["name"], "-o", str(out), "--",
                           sys.executable, str(script), str(tiny_model)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    trace = load_trace(out)
    assert len(trace.table("decode_begin")) >= 2 and trace.meta["ring"]["state"] == "closed"
    assert "warnings" not in trace.meta and trace.meta["engine"]["name"] == engine_build.meta["name"]


def test_llama_server_stopped_from_its_terminal_tears_down_and_is_recorded(tmp_path, engine_build, tiny_model):
    port, out = free_port(), tmp_path / "server.trace"
    server, master, output = in_a_terminal([*GPUSCOPE, "record", "-o", str(out), "--",
                                            str(engine_build.program("llama-server")), "-m", str(tiny_model),
                                            "--port", str(port), "-c", "256", "-t", "2"])

    def healthy() -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status == 200
        except OSError:
            return False

    wait_for(healthy, 120, "llama-server to serve")
    os.write(master, b"\x03")
    assert server.wait(60) == 0, b"".join(output).decode(errors="replace")[-2000:]
    os.close(master)
    trace = load_trace(out)
    assert trace.meta["interrupted"]["forwarded"] is False and trace.meta["exit"]["how"] == "exited with status 0"
    actions = trace.table("buffer")["action"].value_counts()
    assert actions["free"] == actions["alloc"] > 0  # its whole teardown: one Ctrl-C let it free every buffer
    assert not process_alive(trace.meta["ring"]["pid"])


@pytest.mark.parametrize("option", [["--capacity", "-5"], ["--capacity", "0"], ["--capacity", str(1 << 40)],
                                    ["-o", "{file}"], ["-o", "{file}/sub/run.trace"]])
def test_bad_arguments_are_one_line_and_nothing_runs(tmp_path, capsys, option):
    existing = tmp_path / "notes.txt"
    existing.write_text("not a trace")
    ran = tmp_path / "ran"
    options = [part.format(file=existing) for part in option]
    out = [] if "-o" in options else ["-o", str(tmp_path / "run.trace")]
    assert cli.main(["record", *out, *options, "--", sys.executable, "-c", f"open({str(ran)!r}, 'w')"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("gpuscope: error: "), err
    assert not ran.exists() and existing.read_text() == "not a trace"
