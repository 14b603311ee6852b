"""What a run says when it stops early: interruption (Ctrl-C, SIGTERM, a dead parent) and failed writes.

* SIGTERM is turned into ``KeyboardInterrupt`` while a run trains, so both end the same way: the trainer raises
  :class:`TrainingInterrupted`, whose message names the epoch that was running, the epoch ``last.pt`` holds
  and the command that continues the run. Inside :func:`deferred` (the end-of-epoch writes) a signal waits
  until the block ends, so what the message says was saved is what is on disk.
* A write that fails (disk full, permissions) raises :class:`RunWriteError` naming the file, the reason and
  what is still intact (checkpoints are written atomically, so ``last.pt`` always holds a complete epoch).
* A training started by ``ddsd compare`` watches its parent (``DDSD_PARENT_PID``): when the parent dies, even
  by SIGKILL, the training interrupts itself instead of writing on as an orphan.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["PARENT_ENV", "RunWriteError", "TrainingInterrupted", "deferred", "sigterm_as_interrupt", "watch_parent",
           "write_failure"]

#: environment variable holding the pid of the process a training must not outlive (set by ``ddsd compare``)
PARENT_ENV = "DDSD_PARENT_PID"


def resume_command(root: str | Path) -> str:
    return f"ddsd train --out {shlex.quote(str(root))} --resume"


def _state(root: str | Path, saved: int) -> str:
    if saved > 0:
        return (f"{Path(root) / 'checkpoints' / 'last.pt'} holds epoch {saved}, intact; "
                f"continue with `{resume_command(root)}`")
    return "no epoch had finished, so there is no checkpoint to continue from: start the run again"


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C / SIGTERM in (1-based) ``epoch``; ``saved`` epochs are in ``last.pt``."""

    def __init__(self, root: str | Path, epoch: int, saved: int) -> None:
        self.root, self.epoch, self.saved = str(root), epoch, saved
        when = f"after epoch {saved}" if saved >= epoch > 0 else f"at epoch {epoch}"
        super().__init__(f"interrupted {when}; {_state(root, saved)}")

    def __str__(self) -> str:
        return str(self.args[0])


class RunWriteError(OSError):
    """Writing a run file failed; the message names the file, the reason and what is intact."""

    def __str__(self) -> str:
        return str(self.args[0])


def _reason(err: BaseException, path: Path) -> str:
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return "no space left on device"
    if isinstance(err, OSError) and err.errno is not None:
        return os.strerror(err.errno).lower()
    try:  # torch.save reports a failed write as RuntimeError("... unexpected pos ...")
        free = shutil.disk_usage(path.parent if path.parent.exists() else ".").free
    except OSError:
        free = None
    if free is not None and free < 64 * 2**20:
        return f"no space left on device ({free / 2**20:.1f} MiB free; {type(err).__name__}: {err})"
    return f"{type(err).__name__}: {err}"


def write_failure(path: str | Path, err: BaseException, root: str | Path, saved: int) -> RunWriteError:
    """The error to raise when writing ``path`` of the run in ``root`` failed with ``err``."""
    return RunWriteError(f"could not write {path}: {_reason(err, Path(path))}; {_state(root, saved)} "
                         "once the cause is fixed (e.g. space freed)")


class _Signals:
    depth = 0  # > 0 inside deferred()
    pending: str | None = None


def _raise_interrupt(signum, frame):
    name = signal.Signals(signum).name
    if _Signals.depth > 0:
        _Signals.pending = name
        return
    raise KeyboardInterrupt(f"signal {name}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises ``KeyboardInterrupt`` like Ctrl-C, both at once or, inside
    :func:`deferred`, at its end (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT / SIGTERM (under :func:`sigterm_as_interrupt`) until the block ends: a group of writes and
    the bookkeeping of what they saved complete together."""
    _Signals.depth += 1
    try:
        yield
    finally:
        _Signals.depth -= 1
    if _Signals.depth == 0 and _Signals.pending is not None:
        name, _Signals.pending = _Signals.pending, None
        raise KeyboardInterrupt(f"signal {name}")


def watch_parent(pid: int | None = None, interval: float = 1.0) -> threading.Thread | None:
    """Send this process SIGTERM as soon as process ``pid`` (default ``$DDSD_PARENT_PID``) is no longer its
    parent, i.e. the parent died. Returns the daemon watcher thread, or None when there is nothing to watch."""
    if pid is None:
        raw = os.environ.get(PARENT_ENV, "")
        pid = int(raw) if raw.isdigit() else None
    if pid is None or os.getppid() != pid:
        return None

    def loop() -> None:
        while os.getppid() == pid:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=loop, name="ddsd-watch-parent", daemon=True)
    t.start()
    return t
