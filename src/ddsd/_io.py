"""Atomic file writes: a crash at any moment leaves either the old file or the complete new one.

Write to a temporary file in the target's folder, flush and fsync it, ``os.replace`` it over the target (atomic
on POSIX and Windows), then fsync the folder. Used for checkpoints, run files, the data cache and exports.

:func:`flocked` holds an exclusive ``flock`` (run, compare and data-cache locks); :func:`exclusive_lock` keeps a
second writer out of a directory (``flock``: the kernel drops the lock when its
process dies, even by SIGKILL, so a stale lock file never blocks anyone).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["LockedError", "atomic_path", "atomic_write", "atomic_write_bytes", "exclusive_lock", "write_csv"]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported on some platforms (Windows); the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for any writer (``torch.onnx.export``, ``np.save``, ...); on
    success it is fsynced and renamed onto ``path``, on any exception deleted (``path`` is left untouched)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temporary file and move it onto ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(data))


def write_csv(path: str | Path, rows: list[dict[str, Any]], fields: list[str] | None = None) -> None:
    """Write ``rows`` as CSV atomically; floats with 6 significant digits, missing values empty.

    ``fields`` defaults to every key in order of first appearance; keys not in ``fields`` are ignored.
    """
    if fields is None:
        fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_bytes(path, buf.getvalue().encode())


class LockedError(RuntimeError):
    """Another live process holds the lock (the message names the directory and that process)."""


@contextlib.contextmanager
def flocked(path: str | Path, wait: bool = True) -> Iterator[tuple[int, bool]]:
    """Open ``path`` (created if needed) and hold an exclusive ``flock`` on it while the context lasts; yields
    ``(fd, acquired)``: ``acquired`` is False only with ``wait=False`` when another process holds it. Without
    ``fcntl`` (Windows) no file is opened and it yields ``(-1, True)``."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield -1, True
        return
    fd = os.open(Path(path), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            acquired = True
        except BlockingIOError:
            acquired = False
        yield fd, acquired
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def exclusive_lock(path: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed; it records the holder's pid) or raise
    :class:`LockedError` at once naming ``what`` and the holder. Without ``fcntl`` (Windows) it does nothing."""
    with flocked(path, wait=False) as (fd, acquired):
        if not acquired:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise LockedError(f"{what} is in use by another ddsd process (pid {holder}); wait for it to end, "
                              "or stop it, or choose another directory")
        if fd >= 0:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
