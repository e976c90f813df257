"""The ring never clobbers and the reader never trusts: real symlinks, files, FIFOs, concurrent writers, rings
truncated or re-created under a reader, another user's ring."""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gpuscope.errors import CorruptRingError, NotARingError, RingError
from gpuscope.ring.reader import RingReader, open_when_ready
from gpuscope.ring.schema import load_schema
from ring_programs import check_marks, run_library_client, start_producer, wait_for_ring

REFUSED = "recording off"


def fingerprint(path) -> tuple[str, int, int]:
    """Content hash, permission bits and inode of the file at `path` (not following a symlink)."""
    info = os.lstat(path)
    return hashlib.sha256(open(path, "rb").read()).hexdigest(), stat.S_IMODE(info.st_mode), info.st_ino


def gguf_like(path, size: int = 300_000) -> None:
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + os.urandom(size))
    path.chmod(0o644)


def lazy_writer(tmp_path, ring_path, **env: str) -> tuple[dict, str]:
    """A program that records lazily through $GPUSCOPE_RING (as the engine's programs do): what it saw, its stderr."""
    return run_library_client(tmp_path, "lazy", env={**os.environ, "GPUSCOPE_RING": str(ring_path), **env})


def finished_ring(path, events: int = 2000) -> None:
    producer = start_producer(path, "--threads", "2", "--events", str(events), "--capacity", str(4 * events))
    assert producer.wait(60) == 0, producer.stderr.read()


# -- the writer refuses what is already there ------------------------------------------------------------------

NOT_RECORDING = {"devices": [-1, -1, -1], "path": None, "same": True, "bounded": True, "empty": 0}


def test_symlink_at_the_ring_path_is_not_followed(tmp_path):
    target = tmp_path / "precious.gguf"
    gguf_like(target)
    before = fingerprint(target)
    link = tmp_path / "ring-link"
    link.symlink_to(target)

    out, stderr = lazy_writer(tmp_path, link)
    assert out == NOT_RECORDING  # the program ran on with recording off
    assert REFUSED in stderr and str(link) in stderr and "already exists" in stderr
    assert fingerprint(target) == before
    assert os.readlink(link) == str(target)

    dangling = tmp_path / "dangling-link"
    dangling.symlink_to(tmp_path / "would-be-created")
    out, stderr = lazy_writer(tmp_path, dangling)
    assert out == NOT_RECORDING and REFUSED in stderr
    assert not (tmp_path / "would-be-created").exists()


def test_existing_file_at_the_ring_path_is_untouched(tmp_path):
    model = tmp_path / "model.gguf"
    gguf_like(model)
    before = fingerprint(model)
    out, stderr = lazy_writer(tmp_path, model)
    assert out == NOT_RECORDING and REFUSED in stderr
    assert fingerprint(model) == before

    producer = start_producer(model, "--threads", "1", "--events", "10")  # asks for the ring explicitly
    _, err = producer.communicate(timeout=60)
    assert producer.returncode == 1 and os.strerror(errno.EEXIST) in err
    assert fingerprint(model) == before


def test_engine_program_runs_on_and_leaves_a_gguf_at_the_ring_path_alone(engine_build, tiny_model, tmp_path):
    ring_path = tmp_path / "copy.gguf"
    shutil.copyfile(tiny_model, ring_path)
    before = fingerprint(ring_path)
    done = subprocess.run([str(engine_build.program("llama-bench")), "-m", str(ring_path), "-p", "8", "-n", "2",
                           "-r", "1", "-t", "2"], env={**os.environ, "GPUSCOPE_RING": str(ring_path)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"gpuscope: {REFUSED}: {ring_path} already exists" in done.stderr
    assert fingerprint(ring_path) == before  # and the model it benchmarked was that very file


def test_capacity_beyond_the_bound_is_refused_by_the_writer(tmp_path):
    limit = load_schema().constants["GPUSCOPE_MAX_CAPACITY"]
    path = tmp_path / "huge.ring"
    out, stderr = lazy_writer(tmp_path, path, GPUSCOPE_RING_CAPACITY=str(limit + 1))
    assert out == NOT_RECORDING and REFUSED in stderr and str(limit) in stderr
    producer = start_producer(path, "--capacity", str(limit * 2))
    _, err = producer.communicate(timeout=60)
    assert producer.returncode == 1 and os.strerror(errno.EINVAL) in err
    assert not path.exists()


def test_second_writer_on_a_ring_is_refused_and_the_first_loses_nothing(tmp_path):
    path = tmp_path / "shared.ring"
    threads, events = 2, 20_000  # paced: the first writer runs for about a second
    first = start_producer(path, "--threads", str(threads), "--events", str(events), "--capacity", str(1 << 16),
                           "--pace-ns", "50000")
    reader = wait_for_ring(path)
    try:
        inode = os.stat(path).st_ino
        with open(path, "rb") as probe:  # the first writer holds its lock
            with pytest.raises(BlockingIOError):
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)

        second = start_producer(path, "--threads", "1", "--events", "10", "--capacity", "16")
        _, err = second.communicate(timeout=60)
        assert second.returncode == 1 and os.strerror(errno.EEXIST) in err
        out, stderr = lazy_writer(tmp_path, path)
        assert out == NOT_RECORDING and REFUSED in stderr
        assert first.poll() is None, "the first writer died"
        assert reader.status.state == "alive" and os.stat(path).st_ino == inode

        batches = [reader.drain()]
        out, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
        batches.append(reader.drain())
        status = reader.status
        marks = reader.decode(np.concatenate(batches))["mark"]
    finally:
        reader.close()
    assert json.loads(out)["written"] == threads * events
    assert (status.state, status.written, status.read, status.lost) == ("closed", threads * events,
                                                                         threads * events, 0)
    check_marks(marks, threads)


def test_writer_alive_is_its_lock_not_its_pid(tmp_path):
    path = tmp_path / "hung.ring"
    producer = start_producer(path, "--threads", "1", "--events", "100", "--hang-after", "100")
    assert producer.stdout.readline().startswith("READY")
    with RingReader(path) as reader:
        assert reader.status.state == "alive"
        producer.send_signal(signal.SIGKILL)
        producer.wait()
        assert reader.status.state == "exited"  # the kernel dropped the lock with the process
        with open(path, "rb") as probe:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert len(reader.drain()) == 100


# -- the reader refuses what is not a ring, and what changes under it --------------------------------------------

READER_IN_A_SUBPROCESS = textwrap.dedent("""
    import json, sys
    from gpuscope.errors import RingError
    from gpuscope.ring.reader import RingReader, open_when_ready
    outcomes = []
    for opener in (RingReader, open_when_ready):
        try:
            opener(sys.argv[1])
            outcomes.append("opened")
        except RingError as exc:
            outcomes.append(f"{type(exc).__name__}: {exc}")
    print(json.dumps(outcomes))
""")


def test_fifo_at_the_ring_path_is_refused_at_once(tmp_path):
    fifo = tmp_path / "ring.fifo"
    os.mkfifo(fifo)
    # In a subprocess: a reader that blocked on the FIFO would hang this test process for good.
    done = subprocess.run([sys.executable, "-c", READER_IN_A_SUBPROCESS, str(fifo)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    outcomes = json.loads(done.stdout)
    assert outcomes == [f"NotARingError: {fifo}: a FIFO (named pipe), not a ring file"] * 2

    out, stderr = lazy_writer(tmp_path, fifo)  # the writer neither blocks on it nor writes into it
    assert out == NOT_RECORDING and REFUSED in stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_directory_and_missing_paths(tmp_path):
    with pytest.raises(NotARingError, match="a directory, not a ring file"):
        RingReader(tmp_path)
    assert open_when_ready(tmp_path / "not-yet.ring") is None
    empty = tmp_path / "empty.ring"
    empty.touch()
    assert open_when_ready(empty) is None  # a writer creates the file, then sizes it


def test_lazy_capacity_ring_is_read_without_populating_it(tmp_path):
    """A 1 GiB ring holding 15k records costs the reader memory for 15k records, not 1 GiB."""
    path = tmp_path / "big.ring"
    producer = start_producer(path, "--threads", "1", "--events", "15000", "--capacity", str(1 << 24))
    assert producer.wait(60) == 0
    assert path.stat().st_size > 1 << 30
    script = textwrap.dedent("""
        import json, resource, sys
        from gpuscope.ring.reader import RingReader
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with RingReader(sys.argv[1]) as reader:
            marks = reader.read_all()["mark"]
        print(json.dumps({"marks": len(marks), "peak_growth_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}))
    """)
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["marks"] == 15000
    assert result["peak_growth_kib"] < 64 * 1024, result


TRUNCATED_UNDER_THE_READER = textwrap.dedent("""
    import json, sys
    from gpuscope.errors import RingError
    from gpuscope.ring.reader import RingReader
    reader = RingReader(sys.argv[1])
    first = len(reader.drain(max_records=100))
    print("READY", flush=True)
    sys.stdin.readline()  # the test truncates the file now
    outcomes = {"first": first}
    for name, call in (("drain", reader.drain), ("status", lambda: reader.status),
                       ("strings", lambda: reader.string(8))):
        try:
            call()
            outcomes[name] = "ok"
        except RingError as exc:
            outcomes[name] = type(exc).__name__ + ": " + str(exc)
    print(json.dumps(outcomes))
""")


@pytest.mark.parametrize("keep", ["records", "header"])
def test_ring_truncated_under_a_reader_is_a_ring_error(tmp_path, keep):
    path = tmp_path / "shrinking.ring"
    finished_ring(path)
    with RingReader(path) as probe:
        header = probe.header
    reader = subprocess.Popen([sys.executable, "-c", TRUNCATED_UNDER_THE_READER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline() == "READY\n", reader.stderr.read()
        os.truncate(path, header.records_offset + 200 * 64 if keep == "records" else 100)
        out, err = reader.communicate("go\n", timeout=60)
    finally:
        reader.kill()
    assert reader.returncode == 0, f"reader died ({reader.returncode}): {err}"  # -7 would be SIGBUS
    outcomes = json.loads(out)
    assert outcomes["first"] == 100
    assert outcomes["drain"].startswith("CorruptRingError:") and "truncated under this reader" in outcomes["drain"]
    if keep == "header":
        assert outcomes["status"].startswith("CorruptRingError:")
    else:
        assert outcomes["status"] == outcomes["strings"] == "ok"


SHRINK_AND_REGROW = textwrap.dedent("""
    import json, sys
    from gpuscope.errors import RingError
    from gpuscope.ring.reader import RingReader
    outcomes = {"data": 0, "ring_error": 0}
    while sys.stdin.readline() == "again\\n":
        try:
            with RingReader(sys.argv[1]) as reader:
                reader.read_all()
                reader.status
            outcomes["data"] += 1
        except RingError:
            outcomes["ring_error"] += 1
        print("done", flush=True)
    print(json.dumps(outcomes))
""")


def test_ring_shrinking_and_regrowing_while_read_never_kills_the_reader(tmp_path):
    """The file is cut and restored while the reader copies: every read is data or a RingError, never SIGBUS."""
    path = tmp_path / "flapping.ring"
    finished_ring(path, events=20_000)
    whole = path.read_bytes()
    reader = subprocess.Popen([sys.executable, "-c", SHRINK_AND_REGROW, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cuts = [0, 64, 4096, 4096 + len(whole) // 3, len(whole) // 2, len(whole) - 64]
    try:
        with open(path, "r+b") as ring:
            for round_ in range(60):
                reader.stdin.write("again\n")
                reader.stdin.flush()
                ring.truncate(cuts[round_ % len(cuts)])  # races the reader's copies
                ring.seek(0)
                ring.write(whole)
                ring.flush()
                assert reader.stdout.readline() == "done\n", reader.stderr.read()
        out, err = reader.communicate("stop\n", timeout=60)
    finally:
        reader.kill()
    assert reader.returncode == 0, f"reader died ({reader.returncode}): {err}"
    outcomes = json.loads(out)
    assert outcomes["data"] + outcomes["ring_error"] == 60


def test_ring_rewritten_in_place_under_a_reader_is_a_ring_error(tmp_path):
    path, other = tmp_path / "a.ring", tmp_path / "b.ring"
    finished_ring(path)
    finished_ring(other)
    with RingReader(path) as reader:
        assert len(reader.drain(max_records=10)) == 10
        with open(path, "r+b") as ring:  # another ring of the same size written over it
            ring.write(other.read_bytes())
        with pytest.raises(CorruptRingError, match="re-created or overwritten under this reader"):
            reader.drain()
        with pytest.raises(CorruptRingError, match="re-created or overwritten"):
            reader.status
        with open(path, "r+b") as ring:  # truncated to nothing and grown again, as a writer re-creating it would
            ring.truncate(0)
            ring.truncate(len(other.read_bytes()))
        with pytest.raises(CorruptRingError, match="re-created or overwritten"):
            reader.drain()


def test_ring_replaced_at_its_path_is_reported_after_the_old_one_is_read(tmp_path):
    path = tmp_path / "replaced.ring"
    finished_ring(path)
    with RingReader(path) as reader:
        assert len(reader.drain(max_records=100)) == 100
        path.unlink()
        finished_ring(path, events=10)
        assert len(reader.drain()) == 4000 - 100  # the old ring, complete
        with pytest.raises(CorruptRingError, match="another ring file is at this path now"):
            reader.drain()


def test_another_users_ring_is_a_clear_error():
    if os.geteuid() != 0:
        pytest.skip("needs root: to make a ring that this user cannot read, the test drops to another user")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as folder:  # /dev/shm: every folder on the way is open
        os.chmod(folder, 0o755)  # the other user may look into the folder, not into the ring
        path = Path(folder, "root.ring")
        finished_ring(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        done = subprocess.run([sys.executable, "-c", READ_AS_ANOTHER_USER, str(path),
                               str(pwd.getpwnam("nobody").pw_uid)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"NotARingError {path}: permission denied: the ring belongs to root (uid 0, "
                                   "mode 0600); read it as that user")


READ_AS_ANOTHER_USER = textwrap.dedent("""
    import os, sys
    from gpuscope.errors import RingError
    from gpuscope.ring.reader import RingReader
    from gpuscope.ring.schema import load_schema
    load_schema()  # the package's own files are read before dropping privileges
    os.setgid(int(sys.argv[2]))
    os.setuid(int(sys.argv[2]))
    try:
        RingReader(sys.argv[1])
    except RingError as exc:
        print(type(exc).__name__, exc)
""")


def test_ring_error_is_what_a_bad_open_gives(tmp_path):
    """Names that the kernel refuses (a file used as a folder, a name too long) are ring errors, not OSErrors."""
    afile = tmp_path / "plain"
    afile.write_bytes(b"x")
    for bad in (afile / "ring", tmp_path / ("n" * 300)):
        with pytest.raises(RingError, match="cannot open it as a ring"):
            RingReader(bad)
