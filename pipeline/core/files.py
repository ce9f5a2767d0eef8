"""Files written whole or not at all, and the fingerprints that key cached outputs.

Foundation: imports nothing of ours.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "exchange_paths", "fingerprint", "replace_dir"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; moved onto ``path`` (``os.replace``)
    when the block ends without an exception, removed otherwise. Readers of ``path`` see
    the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a fresh name the writer creates itself, so the file gets the usual umask permissions
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _renameat2() -> object | None:
    """glibc's ``renameat2`` (Linux ≥ 3.15, glibc ≥ 2.28), or None where there is none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2()


def exchange_paths(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two existing paths (files or folders) in one atomic step (``renameat2`` with
    ``RENAME_EXCHANGE``): a reader of either path sees the old entry or the new one, never
    nothing. Returns False, having changed nothing, where the system or file system cannot
    (not Linux, or e.g. some network file systems); raises ``OSError`` on other failures."""
    if _RENAMEAT2 is None:
        return False
    rc = _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)  # type: ignore[operator]
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def replace_dir(new: str | os.PathLike, target: str | os.PathLike, trash: str | os.PathLike) -> None:
    """Put folder ``new`` at ``target``, replacing any folder there, and delete the old one.

    Where the file system can, the two are exchanged atomically (:func:`exchange_paths`), so
    ``target`` never goes missing; elsewhere the old folder is first renamed to ``trash``, which
    leaves a moment without ``target`` (readers that check a store's generation notice).
    """
    import shutil

    new, target, trash = Path(new), Path(target), Path(trash)
    if not target.exists():
        new.rename(target)
        return
    if exchange_paths(new, target):  # the old folder is now at ``new``
        shutil.rmtree(new, ignore_errors=True)
        return
    target.rename(trash)
    new.rename(target)
    shutil.rmtree(trash, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def fingerprint(doc: object) -> str:
    """16 hex digits of the SHA-256 of ``doc`` as canonical JSON (sorted keys; values JSON
    cannot carry are written with ``str``). Equal documents give equal fingerprints."""
    blob = json.dumps(doc, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read 1 MiB at a time (checkpoints, split files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
