"""One writer lock for every file two slidewatch processes (or threads) must not write at once.

Foundation: imports nothing of ours but :mod:`pipeline.core.errors`.

:class:`WriterLock` is a :class:`filelock.FileLock` (``flock`` on POSIX, ``LockFileEx`` on
Windows) on a lock file such as ``<store>.zarr.lock``, with what slidewatch adds on top:

* **The holder's pid is in the lock file.** filelock opens a native lock file without
  truncating it and never writes to it, and its ``on_acquired`` hook hands us the locked
  descriptor, so the pid is written there (no second file to clean up); a refused writer
  reads it back (:func:`holder_pid`) to say who is writing.
* **A killed holder's lock is taken over.** The kernel drops the lock when its holder dies,
  even by SIGKILL; the next writer locks the same file and overwrites the dead pid, and
  only one writer can win, however many try.
* **No lock file is left behind.** filelock keeps the file on release; we unlink it first,
  while still holding the lock, so that a waiter which had opened the old file finds it
  unlinked once it gets the lock (filelock checks ``st_nlink``) and tries again on a new
  file: never two holders of two files under one name.
* **Processes and threads alike.** Separate instances exclude each other through the file
  (one descriptor each), in one process or many. One instance is not reentrant — a second
  :meth:`WriterLock.acquire` waits like any other writer — and may be released by another
  thread than the one that took it (``threading.Lock`` gate; filelock's own holds are
  shared between threads, ``thread_local=False``).
* **Errors are** :class:`~pipeline.core.errors.StoreError` **with the fix**: the output
  folder or the lock file cannot be created, or another run holds the lock (its pid and the
  lock file are named).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Self

import filelock

from pipeline.core.errors import StoreError

__all__ = ["WriterLock", "holder_pid"]

#: Seconds between attempts while another writer holds the lock.
POLL_S = 0.1


class WriterLock:
    """An exclusive lock on ``path`` for writing ``target`` (by default ``path`` less ``.lock``).

    :meth:`acquire` waits up to ``wait_s`` seconds (``None``: for ever, as ``with lock:``
    does) and raises :class:`StoreError` naming the holder's pid when it is still held.
    """

    def __init__(self, path: str | os.PathLike, target: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        self.target = Path(target) if target is not None else self.path.with_name(self.path.name.removesuffix(".lock"))
        self._gate = threading.Lock()  # one hold per instance, whichever thread asks
        # fallback_to_soft=False: where the filesystem has no flock, fail loudly rather than
        # switch to a marker file that a killed run would leave locked.
        self._lock = filelock.FileLock(self.path, thread_local=False, fallback_to_soft=False,
                                       on_acquired=_write_pid)

    @property
    def held(self) -> bool:
        """Whether this instance holds the lock."""
        return self._lock.is_locked

    def acquire(self, wait_s: float | None = 0.0) -> None:
        """Take the lock, waiting up to ``wait_s`` seconds (``None``: no limit) for its holder."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"Cannot create the output folder {self.path.parent}: {exc.strerror or exc}.",
                "choose a writable --out (a folder you can create files in).",
            ) from None
        deadline = None if wait_s is None else time.monotonic() + max(0.0, wait_s)
        if not self._gate.acquire(timeout=-1 if deadline is None else max(0.0, deadline - time.monotonic())):
            raise self._held_error()
        taken = False
        try:
            left = -1 if deadline is None else max(0.0, deadline - time.monotonic())
            self._lock.acquire(timeout=left, poll_interval=POLL_S)
            taken = True
        except filelock.Timeout:  # (a TimeoutError, hence an OSError: caught first)
            raise self._held_error() from None
        except OSError as exc:
            raise StoreError(f"Cannot create the lock file {self.path}: {exc.strerror or exc}.",
                             "choose a writable --out.") from None
        finally:
            if not taken:
                self._gate.release()

    def release(self) -> None:
        """Remove the lock file and give the lock back; a no-op when not held."""
        if not self._lock.is_locked:
            return
        try:
            # unlinked while still locked (see the module docstring); on Windows an open file
            # cannot be unlinked, and filelock removes it after unlocking instead
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            try:
                self._lock.release()
            finally:
                self._gate.release()

    def __enter__(self) -> Self:
        self.acquire(wait_s=None)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _held_error(self) -> StoreError:
        pid = holder_pid(self.path)
        who = f"pid {pid}" if pid > 0 else "an unknown process"
        return StoreError(
            f"{self.target} is being written by another slidewatch run ({who}; lock file {self.path}).",
            "wait for that run to finish (or stop it), or write to another --out; "
            "a lock left by a run that died is taken over automatically.",
        )


def holder_pid(path: str | os.PathLike) -> int:
    """The pid recorded in the lock file ``path``; 0 when unknown (no file, a holder that has
    not written it yet, or Windows, where the holder's byte lock keeps others from reading)."""
    try:
        return int(Path(path).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _write_pid(fd: int) -> None:
    """filelock's ``on_acquired`` hook: replace whatever the file held (a dead run's pid) by ours."""
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, str(os.getpid()).encode())
