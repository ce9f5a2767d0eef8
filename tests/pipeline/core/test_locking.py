"""The one writer lock (pipeline.core.locking): exclusive across processes and threads,
names the holder's pid, is taken over when its holder is killed, and leaves no file behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.core.errors import StoreError
from pipeline.core.locking import WriterLock, holder_pid

REPO = Path(__file__).resolve().parents[3]

HOLDER = """
import sys, time
from pipeline.core.locking import WriterLock
lock = WriterLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(60)  # bounded: the test kills it long before
"""


def _start_holder(lock_file: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_file)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the child holds the lock (or died)
    assert line.strip() == "locked", f"holder did not start (exit {proc.poll()})"
    return proc


def test_other_process_is_named_then_its_lock_is_taken_over_after_sigkill(tmp_path):  # type: ignore[no-untyped-def]
    lock_file = tmp_path / "out" / "c.zarr.lock"
    holder = _start_holder(lock_file)
    try:
        assert holder_pid(lock_file) == holder.pid
        mine = WriterLock(lock_file, target=tmp_path / "out" / "c.zarr")
        t0 = time.monotonic()
        with pytest.raises(StoreError) as err:
            mine.acquire(wait_s=0.3)
        assert time.monotonic() - t0 >= 0.3  # it waited, bounded
        msg = str(err.value)
        assert f"pid {holder.pid}" in msg and str(lock_file) in msg and "another slidewatch run" in msg
        assert "Fix:" in msg and "taken over automatically" in msg
        assert holder.poll() is None  # the refusal touched nothing of the holder's
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        holder.stdout.close()  # type: ignore[union-attr]
    assert lock_file.exists() and holder_pid(lock_file) == holder.pid  # left behind by the killed holder
    mine.acquire(wait_s=5)  # the kernel dropped the dead holder's lock: taken over
    assert holder_pid(lock_file) == os.getpid()
    mine.release()
    assert not lock_file.exists()
    assert not mine.held


def test_one_holder_at_a_time_across_threads(tmp_path):  # type: ignore[no-untyped-def]
    lock_file = tmp_path / "l.lock"
    inside, peak, entries, guard = [0], [0], [0], threading.Lock()

    def worker() -> None:
        for _ in range(5):
            with WriterLock(lock_file):  # blocks until free
                with guard:
                    inside[0] += 1
                    entries[0] += 1
                    peak[0] = max(peak[0], inside[0])
                time.sleep(0.005)
                with guard:
                    inside[0] -= 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert entries[0] == 20 and peak[0] == 1
    assert not lock_file.exists()


def test_one_instance_is_not_reentrant_and_can_be_released_by_another_thread(tmp_path):  # type: ignore[no-untyped-def]
    lock = WriterLock(tmp_path / "l.lock")
    lock.acquire()
    with pytest.raises(StoreError, match=f"pid {os.getpid()}"):
        lock.acquire(wait_s=0.1)  # a second acquire (any thread) waits like any other writer
    timer = threading.Timer(0.2, lock.release)
    timer.start()
    other = WriterLock(tmp_path / "l.lock")
    try:
        other.acquire(wait_s=30)  # gets it as soon as the timer thread lets go
    finally:
        timer.cancel()
    assert other.held and not lock.held
    other.release()
    lock.release()  # releasing a lock not held is a no-op
    assert not (tmp_path / "l.lock").exists()


def test_stale_pid_in_the_file_does_not_block(tmp_path):  # type: ignore[no-untyped-def]
    lock_file = tmp_path / "l.lock"
    lock_file.write_text("999999")  # a dead run's lock file: nobody holds a flock on it
    lock = WriterLock(lock_file)
    lock.acquire()
    assert holder_pid(lock_file) == os.getpid()
    lock.release()


def test_unwritable_out_is_reported(tmp_path):  # type: ignore[no-untyped-def]
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="Cannot create the output folder"):
        WriterLock(tmp_path / "file" / "sub" / "c.lock").acquire()
    (tmp_path / "dir.lock").mkdir()  # a lock path that cannot be a file, even for root
    with pytest.raises(StoreError, match="Cannot create the lock file"):
        WriterLock(tmp_path / "dir.lock").acquire()
    if os.geteuid() == 0:
        return  # root writes anywhere; the lock-file case needs an ordinary account
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="Cannot create the lock file"):
            WriterLock(ro / "c.lock").acquire()
    finally:
        ro.chmod(0o700)
